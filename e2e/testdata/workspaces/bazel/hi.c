#include <stdio.h>

int main(void) {
    puts("hello from a binary linked once and cached in Kura");
    return 0;
}
