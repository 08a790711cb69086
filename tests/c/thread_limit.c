/* A start at the process's thread limit: tribe_node_start returns (an
 * error, or a node that works), never hangs, and the host thread's signal
 * mask is what it was. A host that retries a refused start loses no
 * descriptor and no thread to it. Run as `thread_limit N` with RLIMIT_NPROC set to N
 * by this program (scripts/test-c runs it as an unprivileged user, since
 * the limit does not bind root). */
#include "util.h"

#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>

/* Entries of /proc/self/<what> (fd or task), the listing's own left out. */
static int count(const char *what) {
    char path[32];
    snprintf(path, sizeof path, "/proc/self/%s", what);
    DIR *d = opendir(path);
    if (!d) die(__FILE__, __LINE__, "cannot list %s", path);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return strcmp(what, "fd") == 0 ? n - 1 : n;
}

static tribe_node *try_start(tribe_error **err) {
    tribe_config *cfg = NULL;
    OK(tribe_config_new("limited", &cfg, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    tribe_node *node = NULL;
    tribe_node_start(cfg, &node, err);
    tribe_config_free(cfg);
    return node;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    rlim_t limit = (rlim_t)atoi(argv[1]);
    struct rlimit rl = {limit, limit};
    CHECK(setrlimit(RLIMIT_NPROC, &rl) == 0);
    sigset_t before, after;
    CHECK(pthread_sigmask(SIG_BLOCK, NULL, &before) == 0);

    tribe_config *cfg = NULL;
    OK(tribe_config_new("limited", &cfg, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    tribe_node *node = NULL;
    tribe_error *err = NULL;
    double t0 = now_s();
    uint32_t rc = tribe_node_start(cfg, &node, &err);
    double took = now_s() - t0;
    tribe_config_free(cfg);
    printf("thread_limit %s: start -> %s (%s) in %.1f s\n", argv[1], tribe_result_name(rc),
           err ? tribe_error_message(err) : "", took);
    CHECK(rc == TRIBE_OK || rc == TRIBE_IO);
    CHECK(took < 30);
    CHECK(pthread_sigmask(SIG_BLOCK, NULL, &after) == 0);
    for (int sig = 1; sig < 32; sig++)
        CHECK(sigismember(&before, sig) == sigismember(&after, sig));
    tribe_error_free(err);
    if (!node) {
        /* Retried, as a daemon's plugin would be: each refusal gives back
         * what it took. */
        int fds = count("fd"), threads = count("task");
        for (int i = 0; i < 5; i++) {
            err = NULL;
            tribe_node *again = try_start(&err);
            tribe_error_free(err);
            if (again) {
                tribe_node_shutdown(again, NULL);
                tribe_node_free(again);
            }
        }
        sleep_ms(200);
        printf("thread_limit %s: after 5 more tries: %d -> %d descriptors, %d -> %d threads\n",
               argv[1], fds, count("fd"), threads, count("task"));
        CHECK(count("fd") == fds);
        CHECK(count("task") == threads);
    }
    if (node) {
        EXPECT(TRIBE_OK, tribe_node_create_tribe(node, "t", &err));
        EXPECT(TRIBE_OK, tribe_node_shutdown(node, &err));
        tribe_node_free(node);
    }
    return 0;
}
