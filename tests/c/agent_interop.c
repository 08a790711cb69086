/* A C node joins a tribe of `tribe agent` processes (Rust) sealed with one
 * key and calls an agent's built-in `tag` processor through the tribe.
 * TRIBE_BIN names the `tribe` binary. */
#include "util.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

typedef struct {
    pid_t pid;
    char gossip[64];
} agent;

/* Agents still running when a check fails are killed on exit. */
static pid_t running[4];
static int nrunning;

static void kill_agents(void) {
    for (int i = 0; i < nrunning; i++)
        if (running[i] > 0) kill(running[i], SIGKILL);
}

/* Starts an agent and reads its `ready name=... gossip=... admin=...` line. */
static agent spawn_agent(const char *bin, const char *name, const char *key, const char *seed) {
    agent a;
    memset(&a, 0, sizeof a);
    int fds[2];
    CHECK(pipe(fds) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    const char *argv[20];
    int i = 0;
    argv[i++] = bin;
    argv[i++] = "agent";
    argv[i++] = "--name";
    argv[i++] = name;
    argv[i++] = "--bind";
    argv[i++] = "127.0.0.1:0";
    argv[i++] = "--admin";
    argv[i++] = "127.0.0.1:0";
    argv[i++] = "--profile";
    argv[i++] = "local";
    argv[i++] = "--key";
    argv[i++] = key;
    if (seed) {
        argv[i++] = "--seed";
        argv[i++] = seed;
    }
    argv[i] = NULL;
    CHECK(posix_spawn(&a.pid, bin, &actions, NULL, (char *const *)argv, environ) == 0);
    posix_spawn_file_actions_destroy(&actions);
    running[nrunning++] = a.pid;
    close(fds[1]);
    FILE *out = fdopen(fds[0], "r");
    CHECK(out != NULL);
    char line[512];
    bool ready = false;
    while (!ready && fgets(line, sizeof line, out)) {
        const char *g = strstr(line, "gossip=");
        if (strncmp(line, "ready ", 6) == 0 && g) {
            sscanf(g + 7, "%63s", a.gossip);
            ready = true;
        }
    }
    fclose(out);
    if (!ready) die(__FILE__, __LINE__, "agent %s did not get ready", name);
    return a;
}

static void stop_agent(agent *a) {
    int status = 0;
    kill(a->pid, SIGTERM);
    CHECK(waitpid(a->pid, &status, 0) == a->pid);
    for (int i = 0; i < nrunning; i++)
        if (running[i] == a->pid) running[i] = 0;
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static tribe_node *node;

static bool knows_agents(void *arg) {
    (void)arg;
    char *json = tribe_json(node, NULL);
    if (!json) return false;
    bool ok = strstr(json, "\"name\":\"ag-1\"") && strstr(json, "\"name\":\"ag-2\"");
    tribe_string_free(json);
    return ok;
}

static bool tag_reachable(void *arg) {
    (void)arg;
    char *json = tribe_json(node, "agents");
    if (!json) return false;
    bool ok = strstr(json, "\"ag-1\"") && strstr(json, "\"ag-2\"");
    tribe_string_free(json);
    return ok;
}

int main(void) {
    const char *bin = getenv("TRIBE_BIN");
    if (bin == NULL) die(__FILE__, __LINE__, "TRIBE_BIN is not set");
    char *key = NULL;
    OK(tribe_keygen(&key, NULL, NULL));
    atexit(kill_agents);

    agent a1 = spawn_agent(bin, "ag-1", key, NULL);
    agent a2 = spawn_agent(bin, "ag-2", key, a1.gossip);
    node = start_node("c-node", key, a1.gossip, "r1");
    pump p;
    pump_start(&p, node);
    CHECK(wait_for(knows_agents, NULL, 20));
    printf("C node sees both agents\n");

    EXPECT(TRIBE_OK, tribe_node_create_tribe(node, "agents", &err));
    EXPECT(TRIBE_OK, tribe_node_join(node, "agents", "ag-1", &err));
    EXPECT(TRIBE_OK, tribe_node_join(node, "agents", "ag-2", &err));
    CHECK(wait_for(tag_reachable, NULL, 20));

    const char *request =
        "{\"config\":{\"team\":\"c\"},\"metrics\":[{\"name\":\"load/1min\",\"value\":0.5,\"timestamp_ms\":1700000000000}]}";
    uint8_t *reply = NULL;
    size_t len = 0;
    /* The agents learn the tribe by gossip; retry until one serves the call. */
    uint32_t rc = TRIBE_NO_PROVIDER;
    double end = now_s() + 20;
    while ((rc == TRIBE_NO_PROVIDER || rc == TRIBE_REMOTE) && now_s() < end) {
        tribe_error *err = NULL;
        rc = tribe_node_call(node, "agents", "tag", "1", TRIBE_KIND_PROCESSOR,
                             (const uint8_t *)request, strlen(request), 5000, &reply, &len, &err);
        if (rc == TRIBE_REMOTE && strcmp(tribe_error_remote_code(err), "bad_input") == 0)
            die(__FILE__, __LINE__, "%s", tribe_error_message(err));
        if (rc != TRIBE_OK) {
            fprintf(stderr, "retrying: %s\n", tribe_error_message(err));
            sleep_ms(200);
        }
        tribe_error_free(err);
    }
    CHECK(rc == TRIBE_OK);
    char *text = malloc(len + 1);
    memcpy(text, reply, len);
    text[len] = '\0';
    tribe_bytes_free(reply, len);
    printf("tag replied: %s\n", text);
    CHECK(strstr(text, "\"load/1min\"") != NULL);
    CHECK(strstr(text, "\"team\":\"c\"") != NULL);
    CHECK(strstr(text, "\"caller\":\"c-node\"") != NULL);
    CHECK(strstr(text, "\"tagged_by\":\"ag-") != NULL);
    free(text);

    EXPECT(TRIBE_OK, tribe_node_shutdown(node, &err));
    pump_join(&p);
    tribe_node_free(node);
    stop_agent(&a2);
    stop_agent(&a1);
    tribe_string_free(key);
    printf("agent_interop: all checks passed\n");
    return 0;
}
