/*
 * fuzz_common.h - shared by the libFuzzer targets in tests/fuzz/ (Linux):
 * a byte reader over the fuzz input, Lua values made from it, a private
 * NAMEDPIPE_DIR, and the oracle's way of failing.
 *
 * The targets link the module's Linux sources directly (src/ and
 * src/unix/); the system liblua5.4 is not instrumented, which is fine:
 * what is fuzzed is the module.
 */
#ifndef NP_FUZZ_COMMON_H
#define NP_FUZZ_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

#include "np.h"

int luaopen_namedpipe_core(lua_State *L);

/* --------------------------------------------------------------- failing */

/* An oracle disagreement: print what and why, then abort so libFuzzer
 * saves the input as a crash. */
#define FZ_FAIL(...)                                                        \
  do {                                                                      \
    fprintf(stderr, "\n*** fuzz oracle: ");                                 \
    fprintf(stderr, __VA_ARGS__);                                           \
    fprintf(stderr, "\n");                                                  \
    abort();                                                                \
  } while (0)

/* ----------------------------------------------------------- byte reader */

typedef struct fz {
  const uint8_t *p;
  size_t n;
} fz;

static inline unsigned fz_u8(fz *f) {
  if (f->n == 0) return 0;
  f->n--;
  return *f->p++;
}

static inline uint64_t fz_u64(fz *f) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < 8; i++) v = (v << 8) | fz_u8(f);
  return v;
}

/* Up to `want` bytes of the input (fewer at its end). */
static inline size_t fz_take(fz *f, size_t want, const uint8_t **out) {
  if (want > f->n) want = f->n;
  *out = f->p;
  f->p += want;
  f->n -= want;
  return want;
}

/* A length: mostly short, sometimes long. */
static inline size_t fz_len(fz *f) {
  unsigned b = fz_u8(f);
  if (b < 200) return b % 40;
  if (b < 250) return (size_t)fz_u8(f) * 4 + (b - 200);
  return ((size_t)fz_u8(f) << 8 | fz_u8(f)) * 16; /* up to ~1 MiB */
}

/* --------------------------------------------------------- Lua values */

static inline int fz_cfunc(lua_State *L) {
  lua_pushboolean(L, 1);
  return 1;
}

static const lua_Integer fz_special_ints[] = {
    0, 1, -1, 2, 254, 255, 256, 65535, 65536, 65537, 0x7FFFFFFF,
    (lua_Integer)0x80000000u, (lua_Integer)0xFFFFFFFFu,
    (lua_Integer)0x100000000LL, LUA_MAXINTEGER, LUA_MININTEGER,
    LUA_MININTEGER + 1, LUA_MAXINTEGER - 1};

/* Every string value an option accepts, and near misses. */
static const char *const fz_special_strings[] = {
    "byte", "message", "unlimited", "anonymous", "identification",
    "impersonation", "delegation", "0600", "600", "0777", "777", "0000",
    "0", "", "0o600", "0800", "06000", "-600", " 600", "D:(A;;GA;;;WD)",
    "65536", "1", "true", "Byte", "MESSAGE", "byte ", "unlimited\n", "nil",
    "4294967295", "-1", "NaN", "%s%s%s%n", "\\\\.\\pipe\\x"};

/* Push one Lua value of any type made from the input. depth bounds the
 * nesting of tables. */
static inline void fz_push_value(lua_State *L, fz *f, int depth) {
  unsigned kind = fz_u8(f) % 16;
  switch (kind) {
    case 0:
      lua_pushboolean(L, fz_u8(f) & 1);
      break;
    case 1:
      lua_pushinteger(L, fz_special_ints[fz_u8(f) % (sizeof fz_special_ints /
                                                     sizeof fz_special_ints[0])]);
      break;
    case 2:
      lua_pushinteger(L, (lua_Integer)fz_u64(f));
      break;
    case 3:
      lua_pushinteger(L, (lua_Integer)(int8_t)fz_u8(f));
      break;
    case 4: {
      static const double sp[] = {0.0, -0.0, 0.5, 1.0, 1.5, -1.0, 254.0,
                                  255.0, 65536.0, 4294967295.0, 4294967296.0,
                                  9.2233720368547758e18, 1e308, -1e308};
      unsigned b = fz_u8(f) % 17;
      if (b == 14) lua_pushnumber(L, NAN);
      else if (b == 15) lua_pushnumber(L, INFINITY);
      else if (b == 16) lua_pushnumber(L, -INFINITY);
      else lua_pushnumber(L, sp[b]);
      break;
    }
    case 5: {
      uint64_t bits = fz_u64(f);
      double d;
      memcpy(&d, &bits, sizeof d);
      lua_pushnumber(L, d);
      break;
    }
    case 6:
    case 7:
      lua_pushstring(L, fz_special_strings[fz_u8(f) %
                                           (sizeof fz_special_strings /
                                            sizeof fz_special_strings[0])]);
      break;
    case 8: { /* raw bytes, NULs and all */
      const uint8_t *b;
      size_t n = fz_take(f, fz_len(f), &b);
      lua_pushlstring(L, (const char *)b, n);
      break;
    }
    case 9: { /* a valid string with something after a NUL */
      const char *s = fz_special_strings[fz_u8(f) % 8];
      lua_pushfstring(L, "%s", s);
      lua_pushlstring(L, "\0x", 2);
      lua_concat(L, 2);
      break;
    }
    case 10: { /* a long string */
      size_t n = (fz_len(f) % 4096) * 64 + 256; /* up to 256 KiB */
      char c = (char)fz_u8(f);
      luaL_Buffer B;
      char *p = luaL_buffinitsize(L, &B, n);
      memset(p, c, n);
      luaL_pushresultsize(&B, n);
      break;
    }
    case 11:
      if (depth > 0) {
        unsigned i, n = fz_u8(f) % 4;
        lua_createtable(L, 0, 0);
        for (i = 0; i < n; i++) {
          lua_pushinteger(L, (lua_Integer)i + 1);
          fz_push_value(L, f, depth - 1);
          lua_rawset(L, -3);
        }
      } else {
        lua_newtable(L);
      }
      break;
    case 12:
      lua_pushcfunction(L, fz_cfunc);
      break;
    case 13:
      lua_newuserdatauv(L, fz_u8(f) % 16, 0);
      break;
    case 14:
      lua_pushlightuserdata(L, (void *)(uintptr_t)fz_u64(f));
      break;
    default:
      lua_newthread(L);
      break;
  }
}

/* ------------------------------------------------------ environment */

/* A private directory for the sockets the targets really create. */
static char fz_dir[64];

static inline void fz_rmdir(void) {
  if (fz_dir[0]) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fz_dir);
    if (system(cmd) != 0) { /* best effort */ }
  }
}

static inline void fz_setup_dir(void) {
  if (fz_dir[0]) return;
  strcpy(fz_dir, "/tmp/npfuzz-XXXXXX");
  if (!mkdtemp(fz_dir)) {
    perror("mkdtemp");
    abort();
  }
  atexit(fz_rmdir);
}

static inline void fz_safe_env(void) {
  setenv("NAMEDPIPE_DIR", fz_dir, 1);
  unsetenv("XDG_RUNTIME_DIR");
}

/* A fresh Lua state with the module loaded; the module table at the top. */
static inline lua_State *fz_state(void) {
  lua_State *L = luaL_newstate();
  if (!L) abort();
  luaL_openlibs(L);
  luaL_requiref(L, "namedpipe.core", luaopen_namedpipe_core, 0);
  return L;
}

/* Has the message the shape of an argument error for argument `arg`? */
static inline int fz_is_argerror(lua_State *L, int idx, int arg) {
  char want[32];
  const char *msg = lua_tostring(L, idx);
  if (lua_type(L, idx) != LUA_TSTRING || !msg) return 0;
  snprintf(want, sizeof want, "bad argument #%d to ", arg);
  return strstr(msg, want) != NULL;
}

#endif
