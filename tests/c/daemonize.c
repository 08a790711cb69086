/* A daemon that used libtribe, freed its node and then closed every
 * descriptor (the classic daemonize step) may start nodes again: libtribe
 * keeps no process-wide descriptor that the daemon's own files could come
 * to sit at. Before, tokio's signal socket pair was process-wide; a later
 * node's runtime duplicated whatever file had taken its number, read the
 * daemon's pipe (its bytes lost) or panicked on it. */
#include "util.h"

#include <dirent.h>
#include <poll.h>
#include <unistd.h>

#define PIPES 8

static int open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) die(__FILE__, __LINE__, "cannot list /proc/self/fd");
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the listing's own */
}

static bool back_to(void *arg) { return open_fds() <= *(int *)arg; }

/* A node does some work: a tribe made, seen in its own view. */
static void use_node(const char *name) {
    tribe_node *n = start_node(name, NULL, NULL, "r1");
    OK(tribe_node_create_tribe(n, "t", NULL));
    char *json = tribe_json(n, "t");
    CHECK(json != NULL);
    tribe_string_free(json);
    OK(tribe_node_shutdown(n, NULL));
    tribe_node_free(n);
}

int main(void) {
    int before = open_fds();
    use_node("first");
    /* Every descriptor goes with its node: none stays process-wide. */
    CHECK(wait_for(back_to, &before, 5));

    /* The daemon closes everything but stdio, then makes its own files,
     * which take the lowest numbers, where libtribe's were. */
    for (int fd = 3; fd < 1024; fd++) close(fd);
    int pipes[PIPES][2];
    for (int i = 0; i < PIPES; i++) CHECK(pipe(pipes[i]) == 0);

    tribe_node *n = start_node("second", NULL, NULL, "r1");
    OK(tribe_node_create_tribe(n, "t", NULL));
    /* The daemon's pipes are still its own: what it writes, it reads. */
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < PIPES; i++) {
            char out[20], in[20];
            memset(out, 'a' + i, sizeof out);
            CHECK(write(pipes[i][1], out, sizeof out) == (ssize_t)sizeof out);
            struct pollfd p = {pipes[i][0], POLLIN, 0};
            if (poll(&p, 1, 2000) != 1) die(__FILE__, __LINE__, "pipe %d: its bytes are gone", i);
            CHECK(read(pipes[i][0], in, sizeof in) == (ssize_t)sizeof in);
            CHECK(memcmp(in, out, sizeof in) == 0);
        }
        sleep_ms(10);
    }
    char *json = tribe_json(n, "t");
    CHECK(json != NULL);
    tribe_string_free(json);
    OK(tribe_node_shutdown(n, NULL));
    tribe_node_free(n);
    for (int i = 0; i < PIPES; i++) {
        close(pipes[i][0]);
        close(pipes[i][1]);
    }
    printf("daemonize: ok\n");
    return 0;
}
