/**
 * collectd plugin "tribe": makes a collectd daemon a libtribe node.
 *
 * - config:   <Plugin tribe> block (see docs/collectd.md)
 * - init:     starts the node (facts, seeds, key, profile, log level) and
 *             serves the publisher "collectd-log" (logs the batches other
 *             members publish to it)
 * - write:    turns each value list into metrics of the metric-batch JSON
 *             (docs/task-manifest.md) and appends them to a bounded batch;
 *             never blocks on the network (tribe_node_call_async)
 * - read:     a short-interval read callback on collectd's own read threads:
 *             drains the node's events (log records, call completions,
 *             incoming calls), seals and sends due batches, logs drops at
 *             most once per 10 s and dispatches the plugin's own counters
 *             (tribe/derive-published, tribe/derive-dropped, tribe/gauge-queued)
 * - shutdown: last flush (bounded), tribe_node_shutdown (peers see "left"),
 *             drain the events, tribe_node_free
 *
 * Built on libtribe's C ABI only (include/tribe.h).
 */
#include "collectd/core/daemon/collectd.h"
#include "collectd/core/daemon/configfile.h"
#include "collectd/core/daemon/globals.h"
#include "collectd/core/daemon/plugin.h"
#include "collectd/core/daemon/utils_time.h"
#include "collectd/core/utils/common/common.h"

#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "tribe.h"

#define PLUGIN_NAME "tribe"
#define SERVE_NAME "collectd-log"
#define SERVE_VERSION "1"

#define MAX_TARGETS 16
#define MAX_TAGS 32
#define MAX_SEEDS 16
#define MAX_FACTS 64
#define MAX_INFLIGHT_LIMIT 64
#define MAX_NAME_BYTES 256
#define DROP_LOG_EVERY_MS 10000
#define EVENTS_PER_READ 4096
#define JOIN_WAIT TIME_T_TO_CDTIME_T(10)
/* A batch is sealed at this size too: well under libtribe's default payload
 * limit of 4 MiB (a larger call fails with TRIBE_TOO_LARGE). */
#define MAX_BATCH_BYTES (1024 * 1024)

/* ---------------------------------------------------------------- buffers */

typedef struct {
  char *data;
  size_t len, cap;
  bool failed; /* an allocation failed: contents are incomplete */
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
  if (b->failed || b->len + extra + 1 <= b->cap)
    return;
  size_t cap = b->cap ? b->cap : 1024;
  while (cap < b->len + extra + 1)
    cap *= 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) {
    b->failed = true;
    return;
  }
  b->data = p;
  b->cap = cap;
}

static void buf_add(buf_t *b, const char *s, size_t n) {
  buf_reserve(b, n);
  if (b->failed)
    return;
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

static void buf_puts(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void buf_printf(buf_t *b,
                                                             const char *fmt,
                                                             ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = true;
    return;
  }
  if ((size_t)n < sizeof tmp) {
    buf_add(b, tmp, (size_t)n);
    return;
  }
  buf_reserve(b, (size_t)n);
  if (b->failed)
    return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* Whether a string may go into a metric batch: valid UTF-8 with no control
 * character (U+0000-U+001F, U+007F-U+009F). A receiver refuses a whole
 * batch over one such string. */
static bool json_string_ok(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    uint32_t cp;
    size_t len;
    if (*p < 0x80) {
      cp = *p;
      len = 1;
    } else if ((*p & 0xe0) == 0xc0) {
      cp = *p & 0x1f;
      len = 2;
    } else if ((*p & 0xf0) == 0xe0) {
      cp = *p & 0x0f;
      len = 3;
    } else if ((*p & 0xf8) == 0xf0) {
      cp = *p & 0x07;
      len = 4;
    } else {
      return false;
    }
    for (size_t i = 1; i < len; i++) {
      if ((p[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
        return false;
      cp = (cp << 6) | (p[i] & 0x3f);
    }
    static const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false; /* overlong, out of range, or a surrogate */
    if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
      return false;
    p += len;
  }
  return true;
}

static void buf_json_string(buf_t *b, const char *s) {
  buf_add(b, "\"", 1);
  for (const char *p = s; *p; p++) {
    if (*p == '"' || *p == '\\')
      buf_add(b, "\\", 1);
    buf_add(b, p, 1);
  }
  buf_add(b, "\"", 1);
}

/* ---------------------------------------------------------------- state */

/* A sealed batch: the whole step request, shared by the targets. */
typedef struct {
  char *json;
  size_t len;
  size_t metrics;
  int refs;
} batch_t;

typedef struct {
  uint64_t id;
  size_t metrics;
} inflight_t;

typedef struct {
  char *tribe;
  char *plugin;
  char *version; /* NULL: any */
  batch_t **queue; /* ring of QueueLimit sealed batches */
  size_t head, count;
  inflight_t inflight[MAX_INFLIGHT_LIMIT];
  size_t ninflight;
  bool failing; /* the last call failed: log when delivery resumes */
  uint64_t again_logged_ms; /* when "publishing again" was last logged */
} target_t;

typedef struct {
  char *key, *value;
} pair_t;

static struct {
  /* configuration */
  char *name, *bind, *advertise, *key_file, *key, *profile, *data_dir,
      *label, *encryption, *log_level;
  char *seeds[MAX_SEEDS];
  size_t nseeds;
  pair_t facts[MAX_FACTS];
  size_t nfacts;
  pair_t tags[MAX_TAGS];
  size_t ntags;
  target_t targets[MAX_TARGETS];
  size_t ntargets;
  bool serve_log;
  int batch_size, queue_limit, max_inflight, call_timeout_ms;
  cdtime_t flush_interval, event_interval, shutdown_timeout;
  bool collect_facts;

  /* run time */
  pthread_mutex_t lock; /* everything below */
  tribe_node *node;
  bool running;
  bool ready;          /* joined a peer, or no seed, or the wait ran out */
  cdtime_t started_at; /* when the node started */
  buf_t current; /* metric objects of the batch being filled, comma-joined */
  size_t current_metrics;
  cdtime_t current_since;
  uint64_t published, dropped, skipped;
  uint64_t unconfirmed; /* metrics of calls that ended with no answer */
  uint64_t unconfirmed_unlogged;
  int blocks;           /* <Plugin tribe> blocks read */
  uint64_t bad_names; /* values skipped for their names */
  uint64_t bad_name_logged_ms; /* when one was last logged */
  uint64_t drops_unlogged;
  uint64_t events_dropped; /* node events libtribe dropped, as last logged */
  char last_error[256];
  uint64_t last_drop_log_ms;
  cdtime_t last_stats;
} g = {
    .serve_log = true,
    .batch_size = 500,
    .queue_limit = 8,
    .max_inflight = 2,
    .call_timeout_ms = 5000,
    .event_interval = MS_TO_CDTIME_T(200),
    .shutdown_timeout = TIME_T_TO_CDTIME_T(2),
    .collect_facts = true,
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void log_tribe_error(int level, const char *what, uint32_t rc,
                            tribe_error *err) {
  plugin_log(level, PLUGIN_NAME " plugin: %s: %s (%s)", what,
             err ? tribe_error_message(err) : "", tribe_result_name(rc));
  tribe_error_free(err);
}

/* ---------------------------------------------------------------- config */

/* A single-valued option: given twice (also in two blocks) is refused,
 * rather than one value silently replacing the other. */
static int cfg_string(oconfig_item_t *ci, char **out) {
  if (*out != NULL) {
    ERROR(PLUGIN_NAME " plugin: `%s' given twice", ci->key);
    return -1;
  }
  return cf_util_get_string(ci, out);
}

/* The options that may be given more than once (each value once). */
static bool multi_valued(const char *key) {
  return strcasecmp(key, "Seed") == 0 || strcasecmp(key, "Fact") == 0 ||
         strcasecmp(key, "Tag") == 0 || strcasecmp(key, "Publish") == 0;
}

static int cfg_pair(oconfig_item_t *ci, pair_t *list, size_t *n, size_t max) {
  if (ci->values_num != 2 || ci->values[0].type != OCONFIG_TYPE_STRING ||
      ci->values[1].type != OCONFIG_TYPE_STRING) {
    ERROR(PLUGIN_NAME " plugin: `%s' wants two strings", ci->key);
    return -1;
  }
  if (*n >= max) {
    ERROR(PLUGIN_NAME " plugin: at most %zu `%s' options", max, ci->key);
    return -1;
  }
  list[*n].key = strdup(ci->values[0].value.string);
  list[*n].value = strdup(ci->values[1].value.string);
  if (!list[*n].key || !list[*n].value)
    return -1;
  (*n)++;
  return 0;
}

/* Whether text is a key (base64 of 32 bytes, as `tribe keygen` prints). */
static bool is_key(const char *text) {
  char *id = NULL;
  if (text == NULL || tribe_key_id(text, &id, NULL, NULL) != TRIBE_OK)
    return false;
  tribe_string_free(id);
  return true;
}

/* Config text as the log may show it: a key given by mistake where a path
 * or a name goes is withheld (logs travel further than keys may). */
static const char *shown(const char *text) {
  return is_key(text) ? "(a key, withheld)" : text;
}

static int cfg_publish(oconfig_item_t *ci) {
  if (ci->values_num < 2 || ci->values_num > 3) {
    ERROR(PLUGIN_NAME " plugin: `Publish' wants \"tribe\" \"plugin\" "
                      "[\"version\"]");
    return -1;
  }
  for (int i = 0; i < ci->values_num; i++)
    if (ci->values[i].type != OCONFIG_TYPE_STRING) {
      ERROR(PLUGIN_NAME " plugin: `Publish' wants strings");
      return -1;
    }
  if (g.ntargets >= MAX_TARGETS) {
    ERROR(PLUGIN_NAME " plugin: at most %d `Publish' options", MAX_TARGETS);
    return -1;
  }
  for (int i = 0; i < 2; i++) {
    tribe_error *err = NULL;
    if (tribe_name_check(ci->values[i].value.string, &err) != TRIBE_OK) {
      ERROR(PLUGIN_NAME " plugin: `Publish' %s \"%s\": %s",
            i == 0 ? "tribe" : "plugin", shown(ci->values[i].value.string),
            tribe_error_message(err));
      tribe_error_free(err);
      return -1;
    }
  }
  if (ci->values_num == 3) {
    tribe_error *err = NULL;
    if (tribe_version_check(ci->values[2].value.string, &err) != TRIBE_OK) {
      ERROR(PLUGIN_NAME " plugin: `Publish' version \"%s\": %s",
            shown(ci->values[2].value.string), tribe_error_message(err));
      tribe_error_free(err);
      return -1;
    }
  }
  const char *version = ci->values_num == 3 ? ci->values[2].value.string : NULL;
  for (size_t i = 0; i < g.ntargets; i++) {
    const target_t *o = &g.targets[i];
    if (strcmp(o->tribe, ci->values[0].value.string) != 0 ||
        strcmp(o->plugin, ci->values[1].value.string) != 0)
      continue;
    if ((o->version == NULL && version == NULL) ||
        (o->version && version && strcmp(o->version, version) == 0)) {
      /* Every value would reach it twice. */
      ERROR(PLUGIN_NAME " plugin: `Publish' \"%s\" \"%s\" given twice",
            o->tribe, o->plugin);
      return -1;
    }
    if (o->version == NULL || version == NULL) {
      /* Any version takes the highest served, which may be the pinned one:
       * every value would reach that publisher twice. */
      ERROR(PLUGIN_NAME " plugin: `Publish' \"%s\" \"%s\" given twice, for "
                        "any version and for version \"%s\" (any version "
                        "may be that one: every value would reach it twice)",
            o->tribe, o->plugin, o->version ? o->version : version);
      return -1;
    }
  }
  target_t *t = &g.targets[g.ntargets++];
  memset(t, 0, sizeof *t);
  t->tribe = strdup(ci->values[0].value.string);
  t->plugin = strdup(ci->values[1].value.string);
  if (ci->values_num == 3)
    t->version = strdup(ci->values[2].value.string);
  return (t->tribe && t->plugin) ? 0 : -1;
}

static int cfg_int_range(oconfig_item_t *ci, int *out, int lo, int hi) {
  int v = 0;
  /* collectd's own reader would cut 1.5 to 1 without a word. */
  if (ci->values_num == 1 && ci->values[0].type == OCONFIG_TYPE_NUMBER &&
      ci->values[0].value.number != floor(ci->values[0].value.number)) {
    ERROR(PLUGIN_NAME " plugin: `%s' must be a whole number", ci->key);
    return -1;
  }
  if (cf_util_get_int(ci, &v) != 0)
    return -1;
  if (v < lo || v > hi) {
    ERROR(PLUGIN_NAME " plugin: `%s' must be between %d and %d", ci->key, lo,
          hi);
    return -1;
  }
  *out = v;
  return 0;
}

/* A duration in seconds, from lo_ms to hi_ms milliseconds. */
static int cfg_seconds(oconfig_item_t *ci, cdtime_t *out, int lo_ms,
                       int hi_ms) {
  cdtime_t t = 0;
  if (ci->values_num != 1 || ci->values[0].type != OCONFIG_TYPE_NUMBER ||
      !(ci->values[0].value.number >= lo_ms / 1000.0 &&
        ci->values[0].value.number <= hi_ms / 1000.0) ||
      cf_util_get_cdtime(ci, &t) != 0) {
    ERROR(PLUGIN_NAME " plugin: `%s' must be %g to %g seconds", ci->key,
          lo_ms / 1000.0, hi_ms / 1000.0);
    return -1;
  }
  *out = t;
  return 0;
}

static bool build_config(const char *name, tribe_config **out);
static const char *config_time_name(char *buf, size_t len);

static int tribe_config_cb(oconfig_item_t *ci) {
  int status = 0;
  pthread_mutex_lock(&g.lock);
  /* The options are checked together (a key for an Encryption mode, an
   * Advertise for a Bind to 0.0.0.0), which a second block would split. */
  if (++g.blocks > 1) {
    ERROR(PLUGIN_NAME " plugin: a second <Plugin tribe> block: give every "
                      "option of the plugin in one block");
    pthread_mutex_unlock(&g.lock);
    return -1;
  }
  for (int i = 0; i < ci->children_num && status == 0; i++) {
    oconfig_item_t *c = ci->children + i;
    /* A single-valued option given twice is refused, rather than one value
     * silently replacing the other. */
    for (int k = 0; k < i && !multi_valued(c->key); k++)
      if (strcasecmp(ci->children[k].key, c->key) == 0) {
        ERROR(PLUGIN_NAME " plugin: `%s' given twice", c->key);
        status = -1;
        break;
      }
    if (status != 0)
      break;
    if (strcasecmp(c->key, "Name") == 0)
      status = cfg_string(c, &g.name);
    else if (strcasecmp(c->key, "Bind") == 0)
      status = cfg_string(c, &g.bind);
    else if (strcasecmp(c->key, "Advertise") == 0)
      status = cfg_string(c, &g.advertise);
    else if (strcasecmp(c->key, "Seed") == 0) {
      if (g.nseeds >= MAX_SEEDS) {
        ERROR(PLUGIN_NAME " plugin: at most %d `Seed' options", MAX_SEEDS);
        status = -1;
      } else {
        g.seeds[g.nseeds] = NULL;
        status = cf_util_get_string(c, &g.seeds[g.nseeds]);
        if (status == 0)
          g.nseeds++;
        for (size_t k = 0; status == 0 && k + 1 < g.nseeds; k++)
          if (strcmp(g.seeds[k], g.seeds[g.nseeds - 1]) == 0) {
            ERROR(PLUGIN_NAME " plugin: `Seed' \"%s\" given twice",
                  shown(g.seeds[k]));
            status = -1;
          }
      }
    } else if (strcasecmp(c->key, "Fact") == 0) {
      status = cfg_pair(c, g.facts, &g.nfacts, MAX_FACTS);
      for (size_t k = 0; status == 0 && k + 1 < g.nfacts; k++)
        if (strcmp(g.facts[k].key, g.facts[g.nfacts - 1].key) == 0) {
          ERROR(PLUGIN_NAME " plugin: `Fact' \"%s\" given twice",
                shown(g.facts[k].key));
          status = -1;
        }
    }
    else if (strcasecmp(c->key, "CollectFacts") == 0)
      status = cf_util_get_boolean(c, &g.collect_facts);
    else if (strcasecmp(c->key, "KeyFile") == 0)
      status = cfg_string(c, &g.key_file);
    else if (strcasecmp(c->key, "Key") == 0)
      status = cfg_string(c, &g.key);
    else if (strcasecmp(c->key, "Encryption") == 0)
      status = cfg_string(c, &g.encryption);
    else if (strcasecmp(c->key, "Profile") == 0)
      status = cfg_string(c, &g.profile);
    else if (strcasecmp(c->key, "DataDir") == 0)
      status = cfg_string(c, &g.data_dir);
    else if (strcasecmp(c->key, "Label") == 0)
      status = cfg_string(c, &g.label);
    else if (strcasecmp(c->key, "LogLevel") == 0)
      status = cfg_string(c, &g.log_level);
    else if (strcasecmp(c->key, "Publish") == 0)
      status = cfg_publish(c);
    else if (strcasecmp(c->key, "Tag") == 0) {
      status = cfg_pair(c, g.tags, &g.ntags, MAX_TAGS);
      if (status == 0) {
        pair_t *t = &g.tags[g.ntags - 1];
        size_t kl = strlen(t->key), vl = strlen(t->value);
        if (kl == 0 || kl > 128 || vl > 256 || !json_string_ok(t->key) ||
            !json_string_ok(t->value) || strcmp(t->key, "host") == 0 ||
            strcmp(t->key, "ds_type") == 0 || is_key(t->key)) {
          ERROR(PLUGIN_NAME " plugin: `Tag' wants a key of 1 to 128 bytes "
                            "other than host and ds_type (and no encryption "
                            "key), a value of at most 256 bytes, valid UTF-8 "
                            "with no control characters");
          status = -1;
        }
        for (size_t k = 0; status == 0 && k + 1 < g.ntags; k++)
          if (strcmp(g.tags[k].key, t->key) == 0) {
            ERROR(PLUGIN_NAME " plugin: `Tag' \"%s\" given twice", shown(t->key));
            status = -1;
          }
      }
    }
    else if (strcasecmp(c->key, "ServeLogPublisher") == 0)
      status = cf_util_get_boolean(c, &g.serve_log);
    else if (strcasecmp(c->key, "BatchSize") == 0)
      status = cfg_int_range(c, &g.batch_size, 1, 50000);
    else if (strcasecmp(c->key, "QueueLimit") == 0)
      status = cfg_int_range(c, &g.queue_limit, 1, 4096);
    else if (strcasecmp(c->key, "MaxInFlight") == 0)
      status = cfg_int_range(c, &g.max_inflight, 1, MAX_INFLIGHT_LIMIT);
    else if (strcasecmp(c->key, "CallTimeout") == 0) {
      cdtime_t t = 0;
      status = cfg_seconds(c, &t, 1, 600000);
      if (status == 0)
        g.call_timeout_ms = (int)CDTIME_T_TO_MS(t);
    } else if (strcasecmp(c->key, "FlushInterval") == 0)
      status = cfg_seconds(c, &g.flush_interval, 0, 3600000);
    else if (strcasecmp(c->key, "EventInterval") == 0)
      status = cfg_seconds(c, &g.event_interval, 1, 60000);
    else if (strcasecmp(c->key, "ShutdownTimeout") == 0)
      status = cfg_seconds(c, &g.shutdown_timeout, 0, 600000);
    else {
      ERROR(PLUGIN_NAME " plugin: unknown option `%s'", shown(c->key));
      status = -1;
    }
  }
  if (status == 0 && g.key && g.key_file) {
    ERROR(PLUGIN_NAME " plugin: give one of `Key' and `KeyFile', not both");
    status = -1;
  }
  /* Every option libtribe checks is checked now, so a bad one fails
   * collectd's configuration instead of the plugin's start. */
  tribe_config *probe = NULL;
  char host[256];
  if (status == 0 && !build_config(config_time_name(host, sizeof host), &probe))
    status = -1;
  /* And the options that only make sense together (an Encryption mode
   * with no key, a Bind to 0.0.0.0 with no Advertise), as a start would. */
  tribe_error *err = NULL;
  if (status == 0 && tribe_config_check(probe, &err) != TRIBE_OK) {
    ERROR(PLUGIN_NAME " plugin: %s", tribe_error_message(err));
    status = -1;
  }
  tribe_error_free(err);
  tribe_config_free(probe);
  pthread_mutex_unlock(&g.lock);
  return status;
}

/* ---------------------------------------------------------------- batches */

static void batch_unref(batch_t *b) {
  if (b && --b->refs == 0) {
    free(b->json);
    free(b);
  }
}

static void note_drop(size_t metrics, const char *why) {
  g.dropped += metrics;
  g.drops_unlogged += metrics;
  if (why)
    sstrncpy(g.last_error, why, sizeof g.last_error);
}

/* A call that ended with no answer (its timeout, its host gone): its
 * batch may have arrived, so it is not counted as dropped. */
static void note_unconfirmed(size_t metrics, const char *why) {
  g.unconfirmed += metrics;
  g.unconfirmed_unlogged += metrics;
  sstrncpy(g.last_error, why, sizeof g.last_error);
}

/* Logs the drops (and the unconfirmed batches) not logged yet: at most every DROP_LOG_EVERY_MS, or at
 * once (before a line that says delivery recovered, so that the drops
 * before it are not told after it). */
static void log_drops(bool at_once) {
  if (g.drops_unlogged == 0 && g.unconfirmed_unlogged == 0)
    return;
  uint64_t now = mono_ms();
  if (!at_once && g.last_drop_log_ms != 0 &&
      now - g.last_drop_log_ms < DROP_LOG_EVERY_MS)
    return;
  if (g.unconfirmed_unlogged == 0)
    WARNING(PLUGIN_NAME " plugin: dropped %" PRIu64 " metrics (%" PRIu64
                       " in all); last reason: %s",
            g.drops_unlogged, g.dropped, g.last_error);
  else if (g.drops_unlogged == 0)
    WARNING(PLUGIN_NAME " plugin: %" PRIu64 " metrics unconfirmed (%" PRIu64
                       " in all: their calls ended with no answer, they may "
                       "have arrived); last reason: %s",
            g.unconfirmed_unlogged, g.unconfirmed, g.last_error);
  else
    WARNING(PLUGIN_NAME " plugin: dropped %" PRIu64 " metrics (%" PRIu64
                       " in all), %" PRIu64 " unconfirmed (%" PRIu64
                       " in all: their calls ended with no answer, they may "
                       "have arrived); last reason: %s",
            g.drops_unlogged, g.dropped, g.unconfirmed_unlogged, g.unconfirmed,
            g.last_error);
  g.drops_unlogged = 0;
  g.unconfirmed_unlogged = 0;
  g.last_drop_log_ms = now;
}

static void maybe_log_drops(void) { log_drops(false); }

/* Moves the batch being filled into every target's queue (lock held). */
static void seal_current(void) {
  if (g.current_metrics == 0)
    return;
  size_t metrics = g.current_metrics;
  buf_t req = {0};
  buf_puts(&req, "{\"config\":{},\"metrics\":[");
  if (g.current.data)
    buf_add(&req, g.current.data, g.current.len);
  buf_puts(&req, "]}");
  bool failed = g.current.failed || req.failed;
  g.current.len = 0;
  g.current.failed = false;
  if (g.current.data)
    g.current.data[0] = '\0';
  g.current_metrics = 0;
  if (failed) {
    free(req.data);
    note_drop(metrics * g.ntargets, "out of memory");
    return;
  }
  batch_t *b = malloc(sizeof *b);
  if (b == NULL) {
    free(req.data);
    note_drop(metrics * g.ntargets, "out of memory");
    return;
  }
  b->json = req.data;
  b->len = req.len;
  b->metrics = metrics;
  b->refs = 1;
  for (size_t i = 0; i < g.ntargets; i++) {
    target_t *t = &g.targets[i];
    if (t->count == (size_t)g.queue_limit) {
      /* Full: the oldest batch goes, newer values are worth more. */
      batch_t *old = t->queue[t->head];
      t->head = (t->head + 1) % (size_t)g.queue_limit;
      t->count--;
      char why[192];
      snprintf(why, sizeof why, "queue for %s/%s full (%d batches)", t->tribe,
               t->plugin, g.queue_limit);
      note_drop(old->metrics, why);
      batch_unref(old);
    }
    t->queue[(t->head + t->count) % (size_t)g.queue_limit] = b;
    t->count++;
    b->refs++;
  }
  batch_unref(b);
}

/* Starts calls for queued batches while the targets have room (lock held).
 * tribe_node_call_async does not block. */
static void dispatch(void) {
  if (!g.running || g.node == NULL)
    return;
  /* Until the node has a peer it knows no tribe: hold the (bounded) queues
   * rather than drop every batch as "unknown tribe" while it joins. */
  if (!g.ready) {
    if (g.nseeds > 0 && cdtime() - g.started_at < JOIN_WAIT)
      return;
    g.ready = true;
  }
  for (size_t i = 0; i < g.ntargets; i++) {
    target_t *t = &g.targets[i];
    while (t->count > 0 && t->ninflight < (size_t)g.max_inflight) {
      batch_t *b = t->queue[t->head];
      t->head = (t->head + 1) % (size_t)g.queue_limit;
      t->count--;
      uint64_t id = 0;
      tribe_error *err = NULL;
      uint32_t rc = tribe_node_call_async(
          g.node, t->tribe, t->plugin, t->version, TRIBE_KIND_PUBLISHER,
          (const uint8_t *)b->json, b->len, (uint32_t)g.call_timeout_ms, &id,
          &err);
      if (rc == TRIBE_OK) {
        t->inflight[t->ninflight].id = id;
        t->inflight[t->ninflight].metrics = b->metrics;
        t->ninflight++;
      } else {
        char why[256];
        snprintf(why, sizeof why, "%s/%s: %s (%s)", t->tribe, t->plugin,
                 err ? tribe_error_message(err) : "", tribe_result_name(rc));
        note_drop(b->metrics, why);
        t->failing = true;
      }
      tribe_error_free(err);
      batch_unref(b);
    }
  }
}

/* ---------------------------------------------------------------- write */

static void add_metric(const char *name, const char *value,
                       const char *ds_type, const value_list_t *vl) {
  buf_t *b = &g.current;
  if (g.current_metrics > 0)
    buf_add(b, ",", 1);
  else
    g.current_since = cdtime();
  buf_puts(b, "{\"name\":");
  buf_json_string(b, name);
  buf_puts(b, ",\"value\":");
  buf_puts(b, value);
  buf_puts(b, ",\"tags\":{\"host\":");
  buf_json_string(b, vl->host);
  buf_puts(b, ",\"ds_type\":");
  buf_json_string(b, ds_type);
  for (size_t i = 0; i < g.ntags; i++) {
    buf_add(b, ",", 1);
    buf_json_string(b, g.tags[i].key);
    buf_add(b, ":", 1);
    buf_json_string(b, g.tags[i].value);
  }
  buf_printf(b, "},\"timestamp_ms\":%" PRIu64 "}",
             (uint64_t)CDTIME_T_TO_MS(vl->time));
  g.current_metrics++;
}

/* Copies the start of another member's text for collectd's log (at most
 * `cap` - 1 bytes): characters that could start lines of their own or
 * steer a terminal (C0 and C1 controls, DEL) and bytes that are not UTF-8
 * become '?'. */
static void log_safe(char *out, size_t cap, const unsigned char *in,
                     size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len && o + 1 < cap;) {
    unsigned char c = in[i];
    size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                         : (c & 0xf8) == 0xf0 ? 4 : 0;
    bool ok = n > 0 && i + n <= len && !(n == 2 && c < 0xc2) &&
              !(n == 4 && c > 0xf4);
    uint32_t cp = n == 1 ? c : n ? c & (0x7f >> n) : 0;
    for (size_t k = 1; ok && k < n; k++) {
      ok = (in[i + k] & 0xc0) == 0x80;
      cp = (cp << 6) | (in[i + k] & 0x3f);
    }
    ok = ok && !(n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) &&
         !(n == 4 && (cp < 0x10000 || cp > 0x10ffff));
    if (!ok || cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || o + n >= cap) {
      out[o++] = '?';
      i += ok ? n : 1;
      continue;
    }
    memcpy(out + o, in + i, n);
    o += n;
    i += n;
  }
  out[o] = '\0';
}

static void drain_events(tribe_node *node);

/* Whether a target has sealed batches waiting for a place among its calls
 * in flight (lock held). */
static bool backlog(void) {
  for (size_t i = 0; i < g.ntargets; i++)
    if (g.targets[i].count > 0 &&
        g.targets[i].ninflight >= (size_t)g.max_inflight)
      return true;
  return false;
}

static int tribe_write(const data_set_t *ds, const value_list_t *vl,
                       user_data_t *ud) {
  (void)ud;
  if (ds->ds_num != vl->values_len) {
    ERROR(PLUGIN_NAME " plugin: data set %s has %zu sources, value list %zu",
          ds->type, ds->ds_num, vl->values_len);
    return -1;
  }
  /* plugin[-plugin_instance]/type[-type_instance] */
  char base[MAX_NAME_BYTES + 1];
  int n = snprintf(base, sizeof base, "%s%s%s/%s%s%s", vl->plugin,
                   vl->plugin_instance[0] ? "-" : "", vl->plugin_instance,
                   vl->type, vl->type_instance[0] ? "-" : "", vl->type_instance);
  bool bad = n < 0 || (size_t)n >= sizeof base || !json_string_ok(base) ||
             !json_string_ok(vl->host);
  pthread_mutex_lock(&g.lock);
  if (!g.running || g.ntargets == 0) {
    pthread_mutex_unlock(&g.lock);
    return 0;
  }
  for (size_t i = 0; i < vl->values_len; i++) {
    char name[MAX_NAME_BYTES + DATA_MAX_NAME_LEN + 2];
    char value[64];
    const char *ds_type = "gauge";
    /* metric batches take one value per name: several data sources get
     * their name appended */
    int m = ds->ds_num > 1 ? snprintf(name, sizeof name, "%s/%s", base,
                                      ds->ds[i].name)
                           : snprintf(name, sizeof name, "%s", base);
    switch (ds->ds[i].type) {
    case DS_TYPE_GAUGE:
      if (!isfinite(vl->values[i].gauge)) {
        g.skipped++; /* JSON has no NaN: collectd's "unknown" is left out */
        continue;
      }
      snprintf(value, sizeof value, "%.17g", vl->values[i].gauge);
      break;
    case DS_TYPE_DERIVE:
      ds_type = "derive";
      snprintf(value, sizeof value, "%" PRId64, vl->values[i].derive);
      break;
    case DS_TYPE_COUNTER:
      ds_type = "counter";
      snprintf(value, sizeof value, "%llu", vl->values[i].counter);
      break;
    case DS_TYPE_ABSOLUTE:
      ds_type = "absolute";
      snprintf(value, sizeof value, "%" PRIu64, vl->values[i].absolute);
      break;
    default:
      g.skipped++;
      continue;
    }
    bool too_long = n < 0 || (size_t)n >= sizeof base || m < 0 ||
                    (size_t)m > MAX_NAME_BYTES;
    if (bad || too_long || !json_string_ok(ds->ds[i].name)) {
      /* a receiver would refuse the whole batch */
      g.bad_names++;
      uint64_t now = mono_ms();
      if (g.bad_name_logged_ms == 0 ||
          now - g.bad_name_logged_ms >= DROP_LOG_EVERY_MS) {
        g.bad_name_logged_ms = now;
        /* The names may come from the network (collectd's network
         * plugin): what could start a line of its own is shown as '?'. */
        char host[DATA_MAX_NAME_LEN], shown[MAX_NAME_BYTES + 1];
        log_safe(host, sizeof host, (const unsigned char *)vl->host,
                 strlen(vl->host));
        log_safe(shown, sizeof shown, (const unsigned char *)name,
                 m < 0 ? 0 : strnlen(name, sizeof name));
        char rule[64];
        if (too_long)
          snprintf(rule, sizeof rule, "name is over %d bytes", MAX_NAME_BYTES);
        else
          snprintf(rule, sizeof rule, "%s is not UTF-8 or holds control "
                                      "characters",
                   json_string_ok(vl->host) ? "name" : "host");
        WARNING(PLUGIN_NAME " plugin: left out a value of host \"%s\" named "
                           "\"%s\": its %s (%" PRIu64
                           " values left out for their names in all, counted "
                           "in tribe/derive-skipped; logged at most every "
                           "%d s)",
                host, shown, rule, g.bad_names,
                DROP_LOG_EVERY_MS / 1000);
      }
      g.skipped++;
      continue;
    }
    add_metric(name, value, ds_type, vl);
  }
  if (g.current_metrics >= (size_t)g.batch_size ||
      g.current.len >= MAX_BATCH_BYTES) {
    seal_current();
    dispatch();
  }
  tribe_node *node = backlog() ? g.node : NULL;
  pthread_mutex_unlock(&g.lock);
  /* Batches wait for calls in flight: the completions that came since the
   * read callback last looked free their places now, so the pace of
   * publishing is the publisher's, not EventInterval's. */
  if (node)
    drain_events(node);
  return 0;
}

/* ---------------------------------------------------------------- events */

/* Copies the string value of the top-level `key` of the JSON object at
 * `json` into `out` (escapes other than \" and \\ become '?'), empty
 * when there is none. For libtribe's own event JSON, whose keys are plain. */
static void json_string_field(const char *json, size_t len, const char *key,
                              char *out, size_t cap) {
  out[0] = '\0';
  char pattern[64];
  snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
  const char *end = json + len;
  const char *p = strstr(json, pattern);
  if (p == NULL || cap == 0)
    return;
  size_t n = 0;
  for (p += strlen(pattern); p < end && *p != '"' && n + 1 < cap; p++) {
    if (*p == '\\' && p + 1 < end) {
      p++;
      out[n++] = (*p == '"' || *p == '\\') ? *p : '?';
      if (*p == 'u')
        p += p + 4 < end ? 4 : 0;
    } else {
      out[n++] = *p;
    }
  }
  out[n] = '\0';
}

/* The "collectd-log" publisher: logs each batch (count, caller, the start of
 * the first metric) and answers the count, as the agent's publishers do. */
static void serve_call(tribe_event *ev) {
  tribe_responder *r = NULL;
  if (tribe_event_take_responder(ev, &r, NULL) != TRIBE_OK)
    return;
  size_t len = 0;
  const uint8_t *payload = tribe_responder_payload(r, &len);
  const char *plugin = tribe_responder_plugin(r);
  if (plugin == NULL || strcmp(plugin, SERVE_NAME) != 0) {
    tribe_responder_fail(r, "unknown_plugin", "not served by this node", NULL);
  } else {
    /* Checked as the agent's publishers check it. */
    size_t n = 0;
    tribe_error *bad = NULL;
    if (tribe_step_request_check(payload, len, &n, &bad) != TRIBE_OK) {
      WARNING(PLUGIN_NAME " plugin: " SERVE_NAME ": %s sent %zu bytes that "
                         "are not a step request",
              tribe_responder_caller(r), len);
      tribe_responder_fail(r, "bad_input", tribe_error_message(bad), NULL);
      tribe_error_free(bad);
    } else {
      const char *first = payload ? memchr(payload, '[', len) : NULL;
      int show = 0;
      if (first) {
        size_t rest = len - (size_t)(first - (const char *)payload);
        show = (int)(rest > 160 ? 160 : rest);
      }
      /* Another member's bytes: nothing in them may start a line of its
       * own in collectd's log. */
      char shown[161];
      log_safe(shown, sizeof shown, (const unsigned char *)first,
               (size_t)show);
      INFO(PLUGIN_NAME " plugin: " SERVE_NAME ": %zu metrics from %s via "
                      "tribe %s: %s",
           n, tribe_responder_caller(r), tribe_responder_tribe(r), shown);
      char reply[32];
      int m = snprintf(reply, sizeof reply, "%zu", n);
      tribe_responder_reply(r, (const uint8_t *)reply, (size_t)m, NULL);
    }
  }
  tribe_responder_free(r);
}

static void call_done(tribe_event *ev) {
  uint64_t id = 0;
  if (tribe_event_call_id(ev, &id, NULL) != TRIBE_OK)
    return;
  uint8_t *reply = NULL;
  size_t reply_len = 0;
  tribe_error *err = NULL;
  uint32_t rc = tribe_event_take_reply(ev, &reply, &reply_len, &err);
  tribe_bytes_free(reply, reply_len);
  pthread_mutex_lock(&g.lock);
  for (size_t i = 0; i < g.ntargets; i++) {
    target_t *t = &g.targets[i];
    for (size_t j = 0; j < t->ninflight; j++) {
      if (t->inflight[j].id != id)
        continue;
      size_t metrics = t->inflight[j].metrics;
      t->inflight[j] = t->inflight[--t->ninflight];
      if (rc == TRIBE_OK) {
        g.published += metrics;
        if (t->failing) {
          t->failing = false;
          /* At the drop lines' pace: a flapping link would log each turn. */
          uint64_t now = mono_ms();
          if (t->again_logged_ms == 0 ||
              now - t->again_logged_ms >= DROP_LOG_EVERY_MS) {
            t->again_logged_ms = now;
            log_drops(true);
            INFO(PLUGIN_NAME " plugin: publishing to %s/%s again", t->tribe,
                 t->plugin);
          }
        }
      } else {
        /* The message holds the host's own words (a handler's code and
         * message): another member's text, made safe for the log. */
        char raw[256], why[256];
        int n = snprintf(raw, sizeof raw, "%s/%s: %s (%s)", t->tribe,
                         t->plugin, err ? tribe_error_message(err) : "",
                         tribe_result_name(rc));
        size_t len = n < 0 ? 0 : (size_t)n >= sizeof raw ? sizeof raw - 1
                                                         : (size_t)n;
        log_safe(why, sizeof why, (const unsigned char *)raw, len);
        /* No answer, but it may have arrived: its time ran out, its host
         * went, or this node stopped while it was on its way. */
        if (rc == TRIBE_TIMEOUT || rc == TRIBE_DISCONNECTED ||
            rc == TRIBE_SHUTTING_DOWN)
          note_unconfirmed(metrics, why);
        else
          note_drop(metrics, why);
        t->failing = true;
      }
      goto found;
    }
  }
found:
  dispatch();
  pthread_mutex_unlock(&g.lock);
  tribe_error_free(err);
}

static void handle_event(tribe_event *ev) {
  uint32_t kind = tribe_event_kind(ev);
  const char *s = NULL, *tribe = NULL;
  tribe_event_subject(ev, &s, NULL);
  tribe_event_tribe(ev, &tribe, NULL);
  switch (kind) {
  case TRIBE_EVENT_LOG: {
    uint32_t level = TRIBE_LOG_INFO;
    tribe_event_log_level(ev, &level, NULL);
    int sev = level <= TRIBE_LOG_ERROR  ? LOG_ERR
              : level == TRIBE_LOG_WARN ? LOG_WARNING
              : level == TRIBE_LOG_INFO ? LOG_INFO
                                        : LOG_DEBUG;
    plugin_log(sev, PLUGIN_NAME ": %s", s ? s : "");
    break;
  }
  case TRIBE_EVENT_CALL:
    serve_call(ev);
    break;
  case TRIBE_EVENT_CALL_DONE:
    call_done(ev);
    break;
  case TRIBE_EVENT_JOINED:
    INFO(PLUGIN_NAME " plugin: node joined the cluster");
    pthread_mutex_lock(&g.lock);
    if (!g.ready) {
      g.ready = true;
      dispatch();
    }
    pthread_mutex_unlock(&g.lock);
    break;
  case TRIBE_EVENT_ISOLATED:
    if (g.nseeds > 0)
      WARNING(PLUGIN_NAME " plugin: node lost every peer; retrying its seeds");
    else
      WARNING(PLUGIN_NAME " plugin: node lost every peer; it has no `Seed' "
                         "and waits for a member to join it again");
    break;
  case TRIBE_EVENT_TRIBE_JOINED:
    INFO(PLUGIN_NAME " plugin: node is now in tribe %s", tribe ? tribe : "?");
    break;
  case TRIBE_EVENT_TRIBE_LEFT:
    INFO(PLUGIN_NAME " plugin: node left tribe %s", tribe ? tribe : "?");
    break;
  case TRIBE_EVENT_MEMBER_JOINED:
    /* one line per member and restart: for large tribes, debug only */
    plugin_log(LOG_DEBUG, PLUGIN_NAME " plugin: member %s is up", s ? s : "?");
    break;
  case TRIBE_EVENT_MEMBER_LEFT:
  case TRIBE_EVENT_MEMBER_FAILED:
    INFO(PLUGIN_NAME " plugin: member %s %s", s ? s : "?",
         kind == TRIBE_EVENT_MEMBER_LEFT ? "left" : "failed");
    break;
  case TRIBE_EVENT_PLUGIN_LOAD:
  case TRIBE_EVENT_TASK_RUN:
    /* collectd's configuration decides what collectd loads and reads. */
    DEBUG(PLUGIN_NAME " plugin: tribe %s lists %s %s (not run by collectd)",
          tribe ? tribe : "?", kind == TRIBE_EVENT_TASK_RUN ? "task" : "plugin",
          s ? s : "?");
    break;
  case TRIBE_EVENT_POLICY_ERROR: {
    char *json = NULL;
    size_t len = 0;
    char why[256] = "";
    if (tribe_event_json(ev, &json, &len, NULL) == TRIBE_OK) {
      json_string_field(json, len, "message", why, sizeof why);
      tribe_string_free(json);
    }
    WARNING(PLUGIN_NAME " plugin: policy %s cannot be evaluated for this node%s%s",
            s ? s : "?", why[0] ? ": " : "", why);
    break;
  }
  default:
    break;
  }
}

/* Takes the node's waiting events (bounded per round). */
static void drain_events(tribe_node *node) {
  for (int i = 0; i < EVENTS_PER_READ; i++) {
    tribe_event *ev = NULL;
    if (tribe_node_next_event(node, 0, &ev, NULL) != TRIBE_OK || ev == NULL)
      break;
    handle_event(ev);
    tribe_event_free(ev);
  }
}

/* ---------------------------------------------------------------- read */

/* How often the plugin's own values go out: every Interval, or every
 * EventInterval when that is longer (they go out from the read callback). */
static cdtime_t stats_interval(void) {
  cdtime_t every = cf_get_default_interval();
  return g.event_interval > every ? g.event_interval : every;
}

static void dispatch_stats(uint64_t published, uint64_t dropped,
                           uint64_t unconfirmed, uint64_t skipped,
                           size_t queued) {
  value_list_t vl = VALUE_LIST_INIT;
  value_t v;
  vl.values = &v;
  vl.values_len = 1;
  /* They go out once per Interval, not per EventInterval (the read
   * callback's, which collectd would give them): rates and the cache's
   * timeout follow it. An EventInterval longer than Interval spaces the
   * read callbacks, and so these values, further apart: that, then. */
  vl.interval = stats_interval();
  sstrncpy(vl.plugin, PLUGIN_NAME, sizeof vl.plugin);
  sstrncpy(vl.type, "derive", sizeof vl.type);
  sstrncpy(vl.type_instance, "published", sizeof vl.type_instance);
  v.derive = (derive_t)published;
  plugin_dispatch_values(&vl);
  sstrncpy(vl.type_instance, "dropped", sizeof vl.type_instance);
  v.derive = (derive_t)dropped;
  plugin_dispatch_values(&vl);
  sstrncpy(vl.type_instance, "unconfirmed", sizeof vl.type_instance);
  v.derive = (derive_t)unconfirmed;
  plugin_dispatch_values(&vl);
  sstrncpy(vl.type_instance, "skipped", sizeof vl.type_instance);
  v.derive = (derive_t)skipped;
  plugin_dispatch_values(&vl);
  sstrncpy(vl.type, "gauge", sizeof vl.type);
  sstrncpy(vl.type_instance, "queued", sizeof vl.type_instance);
  v.gauge = (gauge_t)queued;
  plugin_dispatch_values(&vl);
}

static int tribe_read(user_data_t *ud) {
  (void)ud;
  pthread_mutex_lock(&g.lock);
  tribe_node *node = g.running ? g.node : NULL;
  pthread_mutex_unlock(&g.lock);
  if (node == NULL)
    return 0;
  /* Events are taken outside the lock: completions take it themselves. */
  drain_events(node);
  uint64_t lost = tribe_node_events_dropped(node);

  cdtime_t now = cdtime();
  bool stats_due = false;
  uint64_t published = 0, dropped = 0, unconfirmed = 0, skipped = 0;
  size_t queued = 0;
  pthread_mutex_lock(&g.lock);
  if (g.current_metrics > 0 && now - g.current_since >= g.flush_interval)
    seal_current();
  dispatch();
  maybe_log_drops();
  if (lost > g.events_dropped) {
    WARNING(PLUGIN_NAME " plugin: libtribe dropped %" PRIu64
                       " node events (read too slowly)",
            lost - g.events_dropped);
    g.events_dropped = lost;
  }
  if (now - g.last_stats >= cf_get_default_interval()) {
    g.last_stats = now;
    stats_due = true;
    published = g.published;
    dropped = g.dropped;
    unconfirmed = g.unconfirmed;
    skipped = g.skipped;
    queued = g.current_metrics;
    for (size_t i = 0; i < g.ntargets; i++)
      for (size_t j = 0; j < g.targets[i].count; j++)
        queued += g.targets[i]
                      .queue[(g.targets[i].head + j) % (size_t)g.queue_limit]
                      ->metrics;
  }
  pthread_mutex_unlock(&g.lock);
  if (stats_due)
    dispatch_stats(published, dropped, unconfirmed, skipped, queued);
  return 0;
}

/* collectd's FLUSH (unixsock, SIGUSR1): the batch being filled goes out
 * now rather than at FlushInterval. */
static int tribe_flush(cdtime_t timeout, const char *identifier,
                       user_data_t *ud) {
  (void)timeout, (void)identifier, (void)ud;
  pthread_mutex_lock(&g.lock);
  if (g.running) {
    seal_current();
    dispatch();
  }
  pthread_mutex_unlock(&g.lock);
  return 0;
}

/* ---------------------------------------------------------------- init */

#define CHECK_SET(what, call)                                                  \
  do {                                                                         \
    tribe_error *e_ = NULL;                                                    \
    uint32_t rc_ = (call);                                                     \
    if (rc_ != TRIBE_OK) {                                                     \
      log_tribe_error(LOG_ERR, what, rc_, e_);                                 \
      goto fail;                                                               \
    }                                                                          \
  } while (0)

/* The node's name as the start will have it, while the configuration is
 * read (collectd sets hostname_g only after): `Name', else collectd's
 * `Hostname' as given so far. Else (a `Hostname' may come later in the file)
 * the data dir's owner, whose check then waits for the start; else the
 * host's name as collectd looks it up (canonical with FQDNLookup, its
 * default). */
static const char *config_time_name(char *buf, size_t len) {
  if (g.name)
    return g.name;
  const char *given = global_option_get("Hostname");
  if (given && given[0])
    return given;
  if (g.data_dir) {
    char *owner = NULL;
    if (tribe_data_dir_owner(g.data_dir, &owner, NULL, NULL) == TRIBE_OK &&
        owner) {
      sstrncpy(buf, owner, len);
      tribe_string_free(owner);
      return buf;
    }
  }
  if (gethostname(buf, len) != 0)
    return "collectd";
  buf[len - 1] = '\0';
  const char *fqdn = global_option_get("FQDNLookup");
  if (fqdn == NULL || IS_TRUE(fqdn)) {
    struct addrinfo hints = {.ai_flags = AI_CANONNAME}, *found = NULL;
    if (getaddrinfo(buf, NULL, &hints, &found) == 0) {
      for (struct addrinfo *a = found; a; a = a->ai_next)
        if (a->ai_canonname && a->ai_canonname[0]) {
          sstrncpy(buf, a->ai_canonname, len);
          break;
        }
      freeaddrinfo(found);
    }
  }
  return buf;
}

/* libtribe's config from the options; false (logged) when one is bad. */
static bool build_config(const char *name, tribe_config **out) {
  tribe_config *cfg = NULL;
  /* A name not given as `Name' is collectd's host name: say where the
   * name came from, and what to set instead. */
  CHECK_SET(g.name ? "config" : "config (the node's name is collectd's "
                                "host name; set `Name' in the plugin's block)",
            tribe_config_new(name, &cfg, &e_));
  if (g.bind)
    CHECK_SET("Bind", tribe_config_set_bind(cfg, g.bind, &e_));
  if (g.advertise)
    CHECK_SET("Advertise", tribe_config_set_advertise(cfg, g.advertise, &e_));
  for (size_t i = 0; i < g.nseeds; i++)
    CHECK_SET("Seed", tribe_config_add_seed(cfg, g.seeds[i], &e_));
  CHECK_SET("CollectFacts",
            tribe_config_set_collect_facts(cfg, g.collect_facts, &e_));
  for (size_t i = 0; i < g.nfacts; i++)
    CHECK_SET("Fact", tribe_config_set_fact(cfg, g.facts[i].key,
                                            g.facts[i].value, &e_));
  /* Read by libtribe, as `tribe agent --key-file` reads it: a file that
   * holds anything but the key is refused, not taken by its first line. */
  if (g.key_file)
    CHECK_SET("KeyFile", tribe_config_add_key_file(cfg, g.key_file, &e_));
  if (g.key)
    CHECK_SET("Key", tribe_config_add_key(cfg, g.key, &e_));
  if (g.encryption)
    CHECK_SET("Encryption", tribe_config_set_encryption(cfg, g.encryption, &e_));
  if (g.profile)
    CHECK_SET("Profile", tribe_config_set_profile(cfg, g.profile, &e_));
  if (g.data_dir)
    CHECK_SET("DataDir", tribe_config_set_data_dir(cfg, g.data_dir, &e_));
  if (g.label)
    CHECK_SET("Label", tribe_config_set_label(cfg, g.label, &e_));
  CHECK_SET("LogLevel", tribe_config_set_log_level(
                            cfg, g.log_level ? g.log_level : "warn", &e_));
  *out = cfg;
  return true;
fail:
  tribe_config_free(cfg);
  return false;
}

/* Whether collectd runs as `collectd -T` (its read test: plugins are
 * initialised, each read callback runs once, and it exits). Plugins are not
 * told; collectd's own options are read from /proc/self/cmdline, as its
 * getopt reads them ("BhtTfC:P:"). A node started then would join the tribe
 * for an instant, and fail on the port or data dir of the daemon running
 * beside it. */
static bool read_test_mode(void) {
  FILE *f = fopen("/proc/self/cmdline", "r");
  if (f == NULL)
    return false;
  static char args[16384];
  size_t n = fread(args, 1, sizeof args - 1, f);
  fclose(f);
  args[n] = '\0';
  bool skip_value = false, first = true;
  for (size_t i = 0; i < n; i += strlen(args + i) + 1) {
    const char *a = args + i;
    if (first || skip_value) { /* the program, or an option's value */
      first = skip_value = false;
      continue;
    }
    if (a[0] != '-' || a[1] == '-' || a[1] == '\0')
      continue;
    for (const char *c = a + 1; *c; c++) {
      if (*c == 'T')
        return true;
      if (*c == 'C' || *c == 'P') { /* the value follows, here or next */
        skip_value = c[1] == '\0';
        break;
      }
    }
  }
  return false;
}

static int tribe_init(void) {
  pthread_mutex_lock(&g.lock);
  if (g.node != NULL) { /* init is called again after a reload */
    pthread_mutex_unlock(&g.lock);
    return 0;
  }
  if (read_test_mode()) {
    pthread_mutex_unlock(&g.lock);
    INFO(PLUGIN_NAME " plugin: collectd -T: the configuration was checked; "
                    "the node is not started");
    return 0;
  }
  if (g.flush_interval == 0)
    g.flush_interval = cf_get_default_interval();
  for (size_t i = 0; i < g.ntargets; i++) {
    g.targets[i].queue = calloc((size_t)g.queue_limit, sizeof(batch_t *));
    if (g.targets[i].queue == NULL) {
      pthread_mutex_unlock(&g.lock);
      return -1;
    }
  }
  tribe_config *cfg = NULL;
  tribe_node *node = NULL;
  if (!build_config(g.name ? g.name : hostname_g, &cfg))
    goto fail;

  /* libtribe's threads start here: they get every signal blocked, so
   * collectd's signal handling stays on collectd's threads. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  tribe_error *err = NULL;
  uint32_t rc = tribe_node_start(cfg, &node, &err);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  tribe_config_free(cfg);
  cfg = NULL;
  if (rc != TRIBE_OK) {
    log_tribe_error(LOG_ERR, "cannot start the node", rc, err);
    goto fail;
  }
  /* Asked of the node: a DataDir's keyring seals as a KeyFile does. */
  char *status = NULL;
  size_t status_len = 0;
  if (tribe_node_status_json(node, &status, &status_len, NULL) == TRIBE_OK &&
      strstr(status, "\"encryption\":\"off\"") != NULL)
    WARNING(PLUGIN_NAME " plugin: no KeyFile (and no keyring in a DataDir): "
                       "gossip and calls travel in plaintext (for tests only)");
  tribe_string_free(status);
  if (g.serve_log)
    CHECK_SET("serve " SERVE_NAME,
              tribe_node_serve(node, SERVE_NAME, SERVE_VERSION,
                               TRIBE_KIND_PUBLISHER, &e_));
  g.node = node;
  g.running = true;
  g.ready = false;
  g.started_at = cdtime();
  g.last_stats = g.started_at;
  pthread_mutex_unlock(&g.lock);

  INFO(PLUGIN_NAME " plugin: node %s at %s (libtribe %s), %zu seed(s), "
                  "publishing to %zu target(s)",
       tribe_node_name(node), tribe_node_addr(node), tribe_version(), g.nseeds,
       g.ntargets);
  plugin_register_complex_read(NULL, PLUGIN_NAME, tribe_read, g.event_interval,
                               NULL);
  return 0;

fail:
  tribe_config_free(cfg);
  if (node) {
    tribe_node_abort(node, NULL);
    tribe_node_free(node);
  }
  pthread_mutex_unlock(&g.lock);
  return -1;
}

/* ---------------------------------------------------------------- shutdown */

static size_t inflight_total(void) {
  size_t n = 0;
  for (size_t i = 0; i < g.ntargets; i++)
    n += g.targets[i].ninflight + g.targets[i].count;
  return n;
}

static int tribe_shutdown(void) {
  pthread_mutex_lock(&g.lock);
  tribe_node *node = g.node;
  if (node == NULL) {
    pthread_mutex_unlock(&g.lock);
    return 0;
  }
  /* A last flush, bounded by ShutdownTimeout; also before the node has
   * joined (calls that find no tribe fail at once, as drops). */
  seal_current();
  g.ready = true;
  dispatch();
  pthread_mutex_unlock(&g.lock);
  cdtime_t deadline = cdtime() + g.shutdown_timeout;
  for (;;) {
    pthread_mutex_lock(&g.lock);
    size_t pending = inflight_total();
    pthread_mutex_unlock(&g.lock);
    if (pending == 0 || cdtime() >= deadline)
      break;
    tribe_event *ev = NULL;
    if (tribe_node_next_event(node, 50, &ev, NULL) != TRIBE_OK)
      break;
    if (ev) {
      handle_event(ev);
      tribe_event_free(ev);
    }
  }
  pthread_mutex_lock(&g.lock);
  g.running = false;
  pthread_mutex_unlock(&g.lock);

  tribe_error *err = NULL;
  uint32_t rc = tribe_node_shutdown(node, &err);
  if (rc != TRIBE_OK)
    log_tribe_error(LOG_WARNING, "shutdown", rc, err);
  /* Drain until the node says it has stopped: completions of the calls
   * still in flight come back as drops. */
  for (;;) {
    tribe_event *ev = NULL;
    if (tribe_node_next_event(node, 100, &ev, NULL) != TRIBE_OK)
      break;
    if (ev == NULL)
      continue;
    handle_event(ev);
    tribe_event_free(ev);
  }
  pthread_mutex_lock(&g.lock);
  /* Batches ShutdownTimeout left no time for. */
  for (size_t i = 0; i < g.ntargets; i++) {
    target_t *t = &g.targets[i];
    while (t->count > 0) {
      batch_t *b = t->queue[t->head];
      char why[192];
      snprintf(why, sizeof why, "%s/%s: still queued at shutdown", t->tribe,
               t->plugin);
      note_drop(b->metrics, why);
      batch_unref(b);
      t->head = (t->head + 1) % (size_t)g.queue_limit;
      t->count--;
    }
    t->ninflight = 0;
  }
  g.last_drop_log_ms = 0; /* the last drops are logged now */
  maybe_log_drops();
  INFO(PLUGIN_NAME " plugin: node %s left; %" PRIu64 " metrics published, %"
                  PRIu64 " dropped, %" PRIu64 " unconfirmed, %" PRIu64
                  " skipped",
       tribe_node_name(node), g.published, g.dropped, g.unconfirmed,
       g.skipped);
  g.node = NULL;
  pthread_mutex_unlock(&g.lock);
  tribe_node_free(node);
  return 0;
}

void module_register(void) {
  plugin_register_complex_config(PLUGIN_NAME, tribe_config_cb);
  plugin_register_init(PLUGIN_NAME, tribe_init);
  plugin_register_write(PLUGIN_NAME, tribe_write, NULL);
  plugin_register_flush(PLUGIN_NAME, tribe_flush, NULL);
  plugin_register_shutdown(PLUGIN_NAME, tribe_shutdown);
}
