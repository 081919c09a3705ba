/* The "v2" build of tagger.c. */
#define TAG "v2"
#include "tagger.c"
