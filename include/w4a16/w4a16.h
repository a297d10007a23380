#pragma once
// Umbrella header of the w4a16 library.
#include "w4a16/checkpoint.h"
#include "w4a16/format.h"
#include "w4a16/moe.h"
#include "w4a16/quantize.h"
#include "w4a16/reference.h"
#include "w4a16/runner.h"
#include "w4a16/safetensors.h"
#include "w4a16/status.h"
