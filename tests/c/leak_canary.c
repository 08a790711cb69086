/* Leaks on purpose: the test script checks that LeakSanitizer reports it,
 * which proves the sanitizer runtime is linked and leak detection is on. */
#include <stdlib.h>
#include <string.h>

int main(void) {
    char *lost = malloc(64);
    memset(lost, 1, 64);
    lost = NULL;
    return 0;
}
