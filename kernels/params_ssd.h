// Params of the ssd kernel family (see params.h for the conventions).
#pragma once
#include <stdint.h>
