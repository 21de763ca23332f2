#include <stdio.h>
#include <greet.h>

int main(void)
{
	puts(greet_message());
	return 0;
}
