// Params of the gated_norm kernel family (see params.h for the conventions).
#pragma once
#include <stdint.h>
