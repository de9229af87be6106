// Params of the ssm_update kernel family (see params.h for the conventions).
#pragma once
#include <stdint.h>
