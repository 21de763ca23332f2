#ifndef GREET_H
#define GREET_H
/* Returns a greeting naming the library version and the CPU it was built for. */
const char *greet_message(void);
#endif
