// Empty: SwiftPM needs one source file in a C target. See include/PreloadShim.h.
#include "PreloadShim.h"
