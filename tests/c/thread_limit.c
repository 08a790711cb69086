/* A start at the process's thread limit: tribe_node_start returns (an
 * error, or a node that works), never hangs, and the host thread's signal
 * mask is what it was. Run as `thread_limit N` with RLIMIT_NPROC set to N
 * by this program (scripts/test-c runs it as an unprivileged user, since
 * the limit does not bind root). */
#include "util.h"

#include <signal.h>
#include <sys/resource.h>

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
    if (node) {
        EXPECT(TRIBE_OK, tribe_node_create_tribe(node, "t", &err));
        EXPECT(TRIBE_OK, tribe_node_shutdown(node, &err));
        tribe_node_free(node);
    }
    return 0;
}
