// Params of the conv1d kernel family (see params.h for the conventions).
#pragma once
#include <stdint.h>
