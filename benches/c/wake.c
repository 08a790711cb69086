/* How long this machine takes to hand work from one sleeping thread to
 * another and back: two threads bounce a byte over two pipes. On a virtual
 * machine whose idle vCPUs halt, the round trip can be ten times what it is
 * while both vCPUs stay busy, and every cross-thread call path (C, Go,
 * Python) pays it where a Rust call served on one runtime thread does not.
 * scripts/bench-c prints it before each round.
 *
 *   wake [round trips, default 20000]
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int there[2], back[2];

static void *bounce(void *arg) {
    (void)arg;
    char c;
    while (read(there[0], &c, 1) == 1)
        if (write(back[1], &c, 1) != 1) break;
    return NULL;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000;
    if (n <= 0 || pipe(there) != 0 || pipe(back) != 0) return 2;
    pthread_t t;
    if (pthread_create(&t, NULL, bounce, NULL) != 0) return 2;
    struct timespec t0, t1;
    char c = 'x';
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++)
        if (write(there[1], &c, 1) != 1 || read(back[0], &c, 1) != 1) return 1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / 1e3;
    printf("%.1f\n", us / (double)n);
    close(there[1]);
    pthread_join(t, NULL);
    return 0;
}
