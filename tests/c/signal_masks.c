/* libtribe's threads block every asynchronous signal (so SIGINT, SIGTERM,
 * SIGCHLD reach the host's threads) and no fault signal, whatever the mask
 * of the thread that started the node: a host that blocks everything
 * before it starts libtribe still gets its crash handler run for a fault
 * on a libtribe thread. Before, the host's blocked faults stayed blocked. */
#include "util.h"

#include <dirent.h>
#include <signal.h>

/* The SigBlk mask of thread `tid`, and whether it is one of libtribe's
 * lasting threads (named "tribe-..."). */
static bool tribe_thread_mask(const char *tid, char name[32], unsigned long long *mask) {
    char path[96], line[256];
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", tid);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool ours = fgets(name, 32, f) && strncmp(name, "tribe-", 6) == 0;
    fclose(f);
    name[strcspn(name, "\n")] = 0;
    /* Threads of the start itself end as it returns (they run nothing). */
    if (strcmp(name, "tribe-start") == 0) return false;
    if (!ours) return false;
    snprintf(path, sizeof path, "/proc/self/task/%s/status", tid);
    f = fopen(path, "r");
    if (!f) return false;
    bool found = false;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "SigBlk: %llx", mask) == 1) found = true;
    fclose(f);
    return found;
}

static unsigned long long bit(int sig) { return 1ULL << (sig - 1); }

/* Checks every libtribe thread's mask; returns how many there were. */
static int check_masks(void) {
    DIR *d = opendir("/proc/self/task");
    CHECK(d != NULL);
    int seen = 0;
    for (struct dirent *e; (e = readdir(d));) {
        unsigned long long mask;
        char name[32];
        if (e->d_name[0] == '.' || !tribe_thread_mask(e->d_name, name, &mask)) continue;
        seen++;
        for (int sig = 1; sig < 32; sig++) {
            if (sig == SIGKILL || sig == SIGSTOP) continue;
            bool fault = sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL ||
                         sig == SIGTRAP || sig == SIGABRT;
            bool blocked = (mask & bit(sig)) != 0;
            if (blocked == fault)
                die(__FILE__, __LINE__, "thread %s (%s): signal %d is %s (SigBlk %llx)", e->d_name, name, sig,
                    blocked ? "blocked" : "not blocked", mask);
        }
    }
    closedir(d);
    return seen;
}

int main(void) {
    /* A host that lets its own threads take signals. */
    tribe_node *a = start_node("open-host", NULL, NULL, NULL);
    CHECK(check_masks() > 0);
    OK(tribe_node_shutdown(a, NULL));
    tribe_node_free(a);

    /* A host that blocks everything before it starts libtribe. */
    sigset_t all, old;
    sigfillset(&all);
    CHECK(pthread_sigmask(SIG_BLOCK, &all, &old) == 0);
    tribe_node *b = start_node("closed-host", NULL, NULL, NULL);
    CHECK(check_masks() > 0);
    /* The host's own mask is its own again. */
    sigset_t now;
    CHECK(pthread_sigmask(SIG_BLOCK, NULL, &now) == 0);
    CHECK(sigismember(&now, SIGSEGV) == 1 && sigismember(&now, SIGINT) == 1);
    OK(tribe_node_shutdown(b, NULL));
    tribe_node_free(b);
    CHECK(pthread_sigmask(SIG_SETMASK, &old, NULL) == 0);
    printf("signal_masks: ok\n");
    return 0;
}
