/* A daemon that used libtribe, freed its node and then closed every
 * descriptor (the classic daemonize step) may start nodes again: libtribe
 * keeps no process-wide descriptor that the daemon's own files could come
 * to sit at. Before, tokio's signal socket pair was process-wide; a later
 * node's runtime duplicated whatever file had taken its number, read the
 * daemon's pipe (its bytes lost) or panicked on it. And every thread and
 * descriptor of a node is gone when its free returns: before, after an
 * abort the data-dir thread could outlive the free with the runtime's
 * descriptors, and close the daemon's own files that took their numbers.
 * A helper the daemon forked keeps no lock of its data dir: before, after
 * the daemon crashed its restart found the dir "in use" while the helper
 * lived. */
#include "util.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define PIPES 8

/* Entries of a /proc directory, "." and ".." aside. */
static int entries(const char *path) {
    DIR *d = opendir(path);
    if (!d) die(__FILE__, __LINE__, "cannot list %s", path);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static int open_fds(void) { return entries("/proc/self/fd") - 1; /* the listing's own */ }

static bool back_to(void *arg) { return open_fds() <= *(int *)arg; }

static int threads(void) { return entries("/proc/self/task"); }

/* A node on data dir `dir`; NULL (and *err) when it cannot start. */
static tribe_node *start_in(const char *dir, tribe_error **err) {
    tribe_config *cfg = NULL;
    tribe_node *n = NULL;
    OK(tribe_config_new("locker", &cfg, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    OK(tribe_config_set_data_dir(cfg, dir, NULL));
    tribe_node_start(cfg, &n, err);
    tribe_config_free(cfg);
    return n;
}

/* Nodes with a data dir, aborted and freed: nothing of theirs outlives the
 * free (checked at once, no waiting). */
static void aborted_nodes_leave_nothing(void) {
    char dir[] = "/tmp/tribe-daemonize-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    int fds = open_fds(), tasks = threads();
    for (int i = 0; i < 40; i++) {
        tribe_node *n = start_in(dir, NULL);
        CHECK(n != NULL);
        if (i % 2) { /* some work to save, or an abort at once */
            OK(tribe_node_create_tribe(n, "x", NULL));
            OK(tribe_node_delete_tribe(n, "x", NULL));
        }
        OK(tribe_node_abort(n, NULL));
        tribe_node_free(n);
        if (open_fds() != fds || threads() != tasks)
            die(__FILE__, __LINE__, "round %d: %d descriptors and %d threads after the free, %d and %d before",
                i, open_fds(), threads(), fds, tasks);
    }
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

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

static void a_crashed_daemons_helper_keeps_no_lock(void) {
    char dir[] = "/tmp/tribe-forklock-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t daemon = fork();
    CHECK(daemon >= 0);
    if (daemon == 0) {
        /* The daemon: a node on the dir, a helper forked without exec, then
         * a crash (no free). The helper reports its pid and sleeps. */
        tribe_node *n = start_in(dir, NULL);
        if (!n) _exit(3);
        pid_t helper = fork();
        if (helper == 0) {
            sleep(30);
            _exit(0);
        }
        if (write(ready[1], &helper, sizeof helper) != (ssize_t)sizeof helper) _exit(4);
        kill(getpid(), SIGKILL);
    }
    close(ready[1]);
    pid_t helper = 0;
    CHECK(read(ready[0], &helper, sizeof helper) == (ssize_t)sizeof helper);
    close(ready[0]);
    int status = 0;
    CHECK(waitpid(daemon, &status, 0) == daemon && WIFSIGNALED(status));
    /* The restart, while the helper lives. */
    tribe_error *err = NULL;
    tribe_node *n = start_in(dir, &err);
    if (!n) {
        kill(helper, SIGKILL);
        die(__FILE__, __LINE__, "restart on the dir: %s", tribe_error_message(err));
    }
    OK(tribe_node_shutdown(n, NULL));
    tribe_node_free(n);
    kill(helper, SIGKILL);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* A relative data dir is the one named when it was set: a daemon that
 * reads its configuration, then changes directory (to "/", say) and then
 * starts its node keeps its state where the configuration said. */
static void a_relative_data_dir_is_fixed_when_set(void) {
    char home[] = "/tmp/tribe-reldir-XXXXXX", elsewhere[] = "/tmp/tribe-elsewhere-XXXXXX";
    CHECK(mkdtemp(home) != NULL && mkdtemp(elsewhere) != NULL);
    char was[4096];
    CHECK(getcwd(was, sizeof was) != NULL);
    CHECK(chdir(home) == 0);
    tribe_config *cfg = NULL;
    tribe_node *n = NULL;
    OK(tribe_config_new("reldir", &cfg, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    OK(tribe_config_set_data_dir(cfg, "state", NULL));
    OK(tribe_config_check(cfg, NULL));
    CHECK(chdir(elsewhere) == 0);
    OK(tribe_node_start(cfg, &n, NULL));
    tribe_config_free(cfg);
    OK(tribe_node_shutdown(n, NULL));
    tribe_node_free(n);
    char path[4200];
    snprintf(path, sizeof path, "%s/state/lock", home);
    if (access(path, F_OK) != 0) die(__FILE__, __LINE__, "no state under %s/state", home);
    snprintf(path, sizeof path, "%s/state", elsewhere);
    if (access(path, F_OK) == 0) die(__FILE__, __LINE__, "the state moved to %s", path);
    CHECK(chdir(was) == 0);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", home, elsewhere);
    CHECK(system(cmd) == 0);
}

int main(void) {
    a_relative_data_dir_is_fixed_when_set();
    a_crashed_daemons_helper_keeps_no_lock();
    aborted_nodes_leave_nothing();
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
