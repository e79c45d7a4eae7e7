/*
 * fuzz_names.c - libFuzzer target for pipe names on Linux: np_name_problem,
 * np_socket_path / np_pipe_path (the name -> socket path mapping, which
 * must never overflow sockaddr_un.sun_path or the caller's buffer) and the
 * binding's check_name through the module's path(), create() and open(),
 * and the loop's cached mapping (np_socket_path_cached) against the plain
 * one, on one loop kept across inputs.
 *
 * Input: byte 0 picks the environment the mapping sees and a prefix for the
 * name; byte 1 the size of the buffer np_pipe_path writes into (allocated
 * to exactly that size, so ASan sees one byte too many); for some modes the
 * next bytes are the NAMEDPIPE_DIR / XDG_RUNTIME_DIR value; the rest is the
 * name (NULs and all).
 *
 * Oracle: an independent model of README's "Names" section: which names are
 * accepted, which path they map to, when the path is too long. Sockets are
 * only really created (create/open) on a private NAMEDPIPE_DIR, and never
 * for absolute socket paths.
 */
#include <ctype.h>
#include <strings.h>

#include "fuzz_common.h"
#include "unix/unix.h"

#define PREFIX "\\\\.\\pipe\\"
#define PREFIX_LEN 9

/* ----------------------------------------------------------- the model */

static int model_sep(char c) { return c == '/' || c == '\\'; }

/* The \\.\pipe\ prefix: any letter case, either separator. */
static int model_prefix(const char *s, size_t len) {
  size_t i;
  if (len < PREFIX_LEN) return 0;
  for (i = 0; i < PREFIX_LEN; i++)
    if (PREFIX[i] == '\\' ? !model_sep(s[i])
                           : tolower((unsigned char)s[i]) != PREFIX[i])
      return 0;
  return 1;
}

/* \\server\pipe\ with either separator and a server other than ".". */
static int model_remote(const char *s, size_t len) {
  size_t i = 2;
  if (len < 2 || !model_sep(s[0]) || !model_sep(s[1])) return 0;
  if (s[0] == '\\' && s[1] == '\\') return 1; /* any \\ name but \\.\pipe\ */
  while (i < len && !model_sep(s[i])) i++;
  return i > 2 && i + 6 <= len && strncasecmp(s + i + 1, "pipe", 4) == 0 &&
         model_sep(s[i + 5]);
}

/* np_name_problem's contract (README, Linux): NULL when accepted. */
static int model_name_ok(const char *s, size_t len) {
  if (memchr(s, '\0', len)) return 0;
  if (!model_prefix(s, len)) {
    if (model_remote(s, len)) return 0;
    return len > 1 && s[0] == '/';
  }
  s += PREFIX_LEN;
  len -= PREFIX_LEN;
  if (len == 0 || memchr(s, '/', len)) return 0;
  if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
    return 0;
  return 1;
}

/* The binding's check_name on top: not empty, at most 256 UTF-16 units. */
static int model_binding_ok(const char *s, size_t len) {
  size_t i, units = 0;
  if (len == 0) return 0;
  for (i = 0; i < len; i++) {
    unsigned char b = (unsigned char)s[i];
    if ((b & 0xC0) != 0x80) units += b >= 0xF0 ? 2 : 1;
  }
  if (units > NP_MAX_NAME) return 0;
  return model_name_ok(s, len);
}

/* The socket directory as README says; *tmp set for /tmp/namedpipe-UID. */
static const char *model_dir(char *buf, size_t size, int *tmp) {
  const char *v = getenv("NAMEDPIPE_DIR");
  *tmp = 0;
  if (v && *v) return v;
  v = getenv("XDG_RUNTIME_DIR");
  if (v && *v) {
    size_t n = strlen(v);
    char *b;
    if (n + sizeof "/namedpipe" > size) return NULL; /* too long anyway */
    b = buf;
    memcpy(b, v, n);
    memcpy(b + n, "/namedpipe", sizeof "/namedpipe");
    return b;
  }
  *tmp = 1;
  snprintf(buf, size, "/tmp/namedpipe-%lu", (unsigned long)geteuid());
  return buf;
}

/* ------------------------------------------------------------ the checks */

static char big[16384];

/* One loop kept across inputs: its directory cache (np_socket_path_cached)
 * sees the environment change between calls, or stay the same. */
static np_loop *cache_loop;

/* The cached mapping must agree with np_socket_path. create_dir only where
 * the directory is the private one (or below it). */
static void check_cached(const char *name, int ok, const char *path,
                         const np_status *st, int create_dir) {
  char *p2 = (char *)malloc(NP_SUN_PATH);
  np_status st2;
  int ok2;
  if (!p2) abort();
  memset(&st2, 0x5A, sizeof st2);
  ok2 = np_socket_path_cached(cache_loop, name, create_dir, p2, &st2);
  if (ok2 && strlen(p2) >= NP_SUN_PATH)
    FZ_FAIL("np_socket_path_cached wrote %zu bytes", strlen(p2));
  if (!create_dir && ok2 != ok)
    FZ_FAIL("np_socket_path_cached %s, np_socket_path %s (%s)",
            ok2 ? "accepted" : "refused", ok ? "accepted" : "refused",
            np_err_name(ok2 ? st->err : st2.err));
  if (ok && ok2 && strcmp(path, p2) != 0)
    FZ_FAIL("np_socket_path_cached gave \"%s\", np_socket_path \"%s\"", p2, path);
  if (!create_dir && !ok && !ok2 && st->err != st2.err)
    FZ_FAIL("np_socket_path_cached failed with %s, np_socket_path with %s",
            np_err_name(st2.err), np_err_name(st->err));
  free(p2);
}

static void check_mapping(const char *name, size_t len, int safe_dir) {
  char dirbuf[8192], *expect = NULL;
  const char *dir = NULL;
  int tmp = 0, ok, want_ok;
  np_status st;
  size_t want_len = 0;
  char *path = (char *)malloc(NP_SUN_PATH); /* exactly: ASan sees overflows */
  if (!path) abort();

  if (!model_prefix(name, len)) {
    want_ok = len < NP_SUN_PATH;
    if (want_ok) expect = strdup(name);
  } else {
    const char *leaf = name + PREFIX_LEN;
    size_t dl;
    dir = model_dir(dirbuf, sizeof dirbuf, &tmp);
    dl = dir ? strlen(dir) : sizeof big;
    want_ok = dir && dl < 4096 && dl + 1 + strlen(leaf) < NP_SUN_PATH;
    if (want_ok) {
      expect = (char *)malloc(dl + 1 + strlen(leaf) + 1);
      sprintf(expect, "%s/%s", dir, leaf);
    }
  }
  if (expect) want_len = strlen(expect);

  memset(&st, 0x5A, sizeof st);
  ok = np_socket_path(name, 0, path, &st);
  if (ok) {
    if (!want_ok) FZ_FAIL("np_socket_path accepted a path the model says is too long");
    if (strlen(path) >= NP_SUN_PATH || strcmp(path, expect) != 0)
      FZ_FAIL("np_socket_path gave \"%s\", model \"%s\"", path, expect);
  } else {
    if (want_ok && !tmp)
      FZ_FAIL("np_socket_path refused a name the model maps to \"%s\" (%s, %ld)",
              expect, np_err_name(st.err), st.code);
    if (!want_ok && st.err != NP_INVALID_NAME)
      FZ_FAIL("too long a path gave %s, not INVALID_NAME", np_err_name(st.err));
    if (want_ok && tmp && st.err != NP_ACCESS_DENIED && st.err != NP_NOT_FOUND &&
        st.err != NP_IO_ERROR)
      FZ_FAIL("/tmp directory check gave %s", np_err_name(st.err));
  }

  check_cached(name, ok, path, &st, 0);
  if (safe_dir && model_prefix(name, len)) check_cached(name, ok, path, &st, 1);

  /* np_pipe_path into a buffer of every size around the path's length. */
  {
    size_t sizes[4], i;
    sizes[0] = want_len;
    sizes[1] = want_len + 1;
    sizes[2] = want_len > 0 ? want_len - 1 : 0;
    sizes[3] = 1024;
    for (i = 0; i < 4; i++) {
      char *buf = (char *)malloc(sizes[i] ? sizes[i] : 1);
      int pok;
      np_status pst;
      if (!buf) abort();
      pok = np_pipe_path(name, buf, sizes[i], &pst);
      if (pok && (!ok || sizes[i] <= want_len || strcmp(buf, expect) != 0))
        FZ_FAIL("np_pipe_path(size %zu) gave \"%.*s\"", sizes[i],
                (int)sizes[i], buf);
      if (!pok && ok && sizes[i] > want_len)
        FZ_FAIL("np_pipe_path(size %zu) refused a path of %zu bytes", sizes[i],
                want_len);
      free(buf);
    }
  }
  free(expect);
  free(path);
}

/* core.path(name) / create / open through Lua, judged against the model. */
static void check_binding(lua_State *L, int mod, const char *name, size_t len,
                          int really_create) {
  int accepted = model_binding_ok(name, len);
  const char *fns[3] = {"path", "create", "open"};
  int i, nfn = really_create ? 3 : 1, pipes[2] = {0, 0};
  for (i = 0; i < nfn; i++) {
    int status;
    lua_getfield(L, mod, fns[i]);
    lua_pushlstring(L, name, len);
    status = lua_pcall(L, 1, 4, 0);
    if (status != LUA_OK) {
      char want[64];
      const char *msg = lua_tostring(L, -1);
      /* "bad argument #1 to 'namedpipe.core.path' (...)" */
      snprintf(want, sizeof want, "%s' (", fns[i]);
      if (accepted)
        FZ_FAIL("%s refused a name the model accepts: %s", fns[i], msg);
      if (!msg || !fz_is_argerror(L, -1, 1) || !strstr(msg, want))
        FZ_FAIL("%s: error does not name argument #1: %s", fns[i],
                lua_tostring(L, -1));
      lua_pop(L, 1);
      continue;
    }
    if (!accepted)
      FZ_FAIL("%s accepted a name the model refuses (len %zu)", fns[i], len);
    if (lua_isnil(L, -4)) {
      if (lua_type(L, -3) != LUA_TSTRING || lua_type(L, -2) != LUA_TSTRING)
        FZ_FAIL("%s failed without (nil, msg, name, code)", fns[i]);
      lua_pop(L, 4);
    } else if (i == 0) {
      if (lua_type(L, -4) != LUA_TSTRING) FZ_FAIL("path returned no string");
      lua_pop(L, 4);
    } else {
      lua_pop(L, 3);
      pipes[i - 1] = lua_gettop(L);
    }
  }
  for (i = 1; i >= 0; i--) {
    if (!pipes[i]) continue;
    luaL_getmetafield(L, pipes[i], "__index");
    lua_getfield(L, -1, "close");
    lua_pushvalue(L, pipes[i]);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
  }
  lua_getfield(L, mod, "step");
  lua_call(L, 0, 0);
}

/* ----------------------------------------------------------- libFuzzer */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fz_setup_dir();
  {
    np_status st;
    if (!(cache_loop = np_loop_new(&st))) abort();
  }
  return 0;
}

/* An environment value from the input: NUL-free, at most max bytes. */
static const char *env_from(fz *f, char *buf, size_t max) {
  const uint8_t *b;
  size_t n = fz_take(f, fz_len(f), &b), i, j = 0;
  if (n > max) n = max;
  for (i = 0; i < n; i++)
    if (b[i]) buf[j++] = (char)b[i];
  buf[j] = '\0';
  return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz f = {data, size};
  unsigned mode = fz_u8(&f), envmode = mode % 6, prefix = (mode >> 3) & 3;
  char envbuf[8200];
  const uint8_t *rest;
  size_t rlen, len;
  char *name;
  int really_create = 0;
  lua_State *L;

  switch (envmode) {
    case 0: /* NAMEDPIPE_DIR from the input */
      unsetenv("XDG_RUNTIME_DIR");
      setenv("NAMEDPIPE_DIR", env_from(&f, envbuf, 8192), 1);
      break;
    case 1: /* empty NAMEDPIPE_DIR: XDG_RUNTIME_DIR from the input */
      setenv("NAMEDPIPE_DIR", "", 1);
      setenv("XDG_RUNTIME_DIR", env_from(&f, envbuf, 8192), 1);
      break;
    case 2: /* neither: /tmp/namedpipe-UID */
      unsetenv("NAMEDPIPE_DIR");
      unsetenv("XDG_RUNTIME_DIR");
      break;
    case 3: /* the private directory: sockets are really made */
      fz_safe_env();
      really_create = 1;
      break;
    case 4:
      unsetenv("NAMEDPIPE_DIR");
      setenv("XDG_RUNTIME_DIR", env_from(&f, envbuf, 8192), 1);
      break;
    default: { /* a directory whose length walks over the sun_path limit */
      size_t n = fz_u8(&f) % 112, dl = strlen(fz_dir);
      memcpy(envbuf, fz_dir, dl);
      envbuf[dl] = '/';
      memset(envbuf + dl + 1, 'd', n);
      envbuf[dl + 1 + n] = '\0';
      setenv("NAMEDPIPE_DIR", envbuf, 1);
      unsetenv("XDG_RUNTIME_DIR");
      really_create = 1;
      break;
    }
  }

  rlen = fz_take(&f, f.n, &rest);
  {
    /* (the third: Windows takes either separator, any letter case) */
    static const char *const prefixes[] = {"", PREFIX, "/\\./PiPe\\", "/"};
    size_t pl = strlen(prefixes[prefix]);
    if (pl + rlen >= sizeof big) rlen = sizeof big - pl - 1;
    memcpy(big, prefixes[prefix], pl);
    memcpy(big + pl, rest, rlen);
    len = pl + rlen;
    big[len] = '\0';
  }
  name = (char *)malloc(len + 1); /* exactly, for ASan */
  memcpy(name, big, len + 1);

  /* np_name_problem against the model (length as given: NULs included). */
  {
    const char *problem = np_name_problem(name, len);
    int want = model_name_ok(name, len);
    if ((problem == NULL) != want)
      FZ_FAIL("np_name_problem %s a name the model %s (%s)",
              problem ? "refused" : "accepted", want ? "accepts" : "refuses",
              problem ? problem : "-");
    if (problem && (!*problem || strlen(problem) > 200))
      FZ_FAIL("np_name_problem's message is unusable");
  }
  if (model_name_ok(name, len)) check_mapping(name, len, really_create);

  L = fz_state();
  /* Absolute socket paths are never created or connected to for real:
   * they could be anywhere in the file system. */
  if (really_create && model_binding_ok(name, len) && !model_prefix(name, len))
    really_create = 0;
  check_binding(L, lua_gettop(L), name, len, really_create);
  lua_close(L);
  free(name);
  return 0;
}
