#include "greet.h"

#if defined(__aarch64__)
#define GREET_ARCH "aarch64"
#elif defined(__x86_64__)
#define GREET_ARCH "x86_64"
#else
#define GREET_ARCH "unknown"
#endif

const char *greet_message(void)
{
	return "hello from libgreet " GREET_VERSION " built for " GREET_ARCH;
}
