/*
 * fuzz_options.c - libFuzzer target for the option tables (src/options.c)
 * and, through the module's own create/open, what the Linux backend does
 * with every option value the parser lets through.
 *
 * The input becomes a Lua option table: keys from the real key sets (server
 * and client), near misses (a NUL and more after the key, other case,
 * truncated), junk keys and non-string keys; values of every Lua type
 * (huge, negative, float, NaN and infinite numbers, long strings, strings
 * with NULs, tables, functions, userdata, threads). Sometimes the option
 * argument is not a table at all, or nil.
 *
 * np_check_server_options / np_check_client_options run under lua_pcall.
 * Allowed outcomes: a clean return whose struct matches an independent
 * model of README's option tables, or a Lua error "bad argument #2 ..."
 * when the model says the table is bad. Anything else (a crash, a
 * sanitizer report, a stack imbalance, a value the model would not give)
 * aborts.
 *
 * Found here and fixed: keys and enum strings were compared as C strings,
 * so "read\0junk" was taken for the key "read" and "byte\0x" for "byte".
 * Any recurrence aborts (NP_FUZZ_STRICT=0 only reports it).
 *
 * With bit 2 of the first byte set, the same table also goes to the
 * module's create() and open() on a private NAMEDPIPE_DIR; the pipes are
 * closed and the loop stepped before the state is closed.
 */
#include "fuzz_common.h"
#include "options.h"

/* ------------------------------------------------------------ the keys */

static const char *const server_keys[] = {
    "access_inbound", "access_outbound", "first_pipe_instance", "write_dac",
    "write_owner", "access_system_security", "pipe_mode",
    "reject_remote_clients", "max_instances", "out_buffer_size",
    "in_buffer_size", "security", NULL};
static const char *const client_keys[] = {"read", "write",
                                          "security_qos_flags", "pipe_mode",
                                          NULL};
/* Real keys of both sides plus the Lua layer's open() extras. */
static const char *const all_keys[] = {
    "access_inbound", "access_outbound", "first_pipe_instance", "write_dac",
    "write_owner", "access_system_security", "pipe_mode",
    "reject_remote_clients", "max_instances", "out_buffer_size",
    "in_buffer_size", "security", "read", "write", "security_qos_flags",
    "timeout", "wait_for_server"};
#define N_ALL_KEYS (sizeof all_keys / sizeof all_keys[0])

static void push_key(lua_State *L, fz *f) {
  unsigned k = fz_u8(f);
  const char *real = all_keys[fz_u8(f) % N_ALL_KEYS];
  if (k < 160) {
    lua_pushstring(L, real);
  } else if (k < 200) {
    size_t n = strlen(real);
    switch (k % 5) {
      case 0: /* a NUL and more: a C-string compare takes it for `real` */
        lua_pushstring(L, real);
        lua_pushlstring(L, "\0junk", 1 + fz_u8(f) % 5);
        lua_concat(L, 2);
        break;
      case 1: { /* upper case */
        char buf[64];
        size_t i;
        for (i = 0; i <= n; i++)
          buf[i] = (char)(real[i] >= 'a' && real[i] <= 'z' ? real[i] - 32
                                                           : real[i]);
        lua_pushstring(L, buf);
        break;
      }
      case 2:
        lua_pushfstring(L, "%s ", real);
        break;
      case 3:
        lua_pushlstring(L, real, n - 1 - fz_u8(f) % (n - 1));
        break;
      default:
        lua_pushfstring(L, "_%s", real);
        break;
    }
  } else if (k < 230) {
    const uint8_t *b;
    size_t n = fz_take(f, fz_len(f), &b);
    lua_pushlstring(L, (const char *)b, n);
  } else {
    switch (k % 6) {
      case 0:
        lua_pushinteger(L, (lua_Integer)(int8_t)fz_u8(f));
        break;
      case 1:
        lua_pushnumber(L, 0.5 + (double)fz_u8(f));
        break;
      case 2:
        lua_pushboolean(L, fz_u8(f) & 1);
        break;
      case 3:
        lua_newtable(L);
        break;
      case 4:
        lua_pushcfunction(L, fz_cfunc);
        break;
      default:
        lua_pushlightuserdata(L, (void *)(uintptr_t)(fz_u8(f) + 1));
        break;
    }
  }
}

/* ----------------------------------------------------------- the model */

/* README's option tables, written independently of options.c. `cstr`
 * models comparing keys and enum strings as C strings (up to a NUL), to
 * tell the known NUL finding from anything new. Returns 1 if the table is
 * valid, with the options it means in *o. */

static int model_str_eq(lua_State *L, int idx, const char *want, int cstr) {
  size_t len;
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  s = lua_tolstring(L, idx, &len);
  if (cstr) return strcmp(s, want) == 0;
  return len == strlen(want) && memcmp(s, want, len) == 0;
}

static int model_u32(lua_State *L, int idx, uint32_t *out) {
  lua_Integer n;
  if (!lua_isinteger(L, idx)) return 0;
  n = lua_tointeger(L, idx);
  if (n < 0 || n > (lua_Integer)0xFFFFFFFFLL) return 0;
  *out = (uint32_t)n;
  return 1;
}

static int model_bool(lua_State *L, int idx, int *out) {
  if (lua_type(L, idx) != LUA_TBOOLEAN) return 0;
  *out = lua_toboolean(L, idx);
  return 1;
}

static int model_mode(lua_State *L, int idx, int cstr, np_mode *out) {
  if (model_str_eq(L, idx, "byte", cstr)) *out = NP_MODE_BYTE;
  else if (model_str_eq(L, idx, "message", cstr)) *out = NP_MODE_MESSAGE;
  else return 0;
  return 1;
}

/* Which key of `keys` is the key at idx; -1 for none. */
static int model_key(lua_State *L, int idx, const char *const *keys,
                     int cstr) {
  int i;
  for (i = 0; keys[i]; i++)
    if (model_str_eq(L, idx, keys[i], cstr)) return i;
  return -1;
}

static int model_server(lua_State *L, int t, int cstr, np_server_options *o) {
  int ok = 1;
  np_server_options_default(o);
  if (lua_isnoneornil(L, t)) return 1;
  if (lua_type(L, t) != LUA_TTABLE) return 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int k = lua_type(L, -2) == LUA_TSTRING ? model_key(L, -2, server_keys, cstr)
                                           : -1;
    lua_Integer n;
    size_t len;
    switch (k) {
      case 0: ok &= model_bool(L, -1, &o->access_inbound); break;
      case 1: ok &= model_bool(L, -1, &o->access_outbound); break;
      case 2: ok &= model_bool(L, -1, &o->first_pipe_instance); break;
      case 3: ok &= model_bool(L, -1, &o->write_dac); break;
      case 4: ok &= model_bool(L, -1, &o->write_owner); break;
      case 5: ok &= model_bool(L, -1, &o->access_system_security); break;
      case 6: ok &= model_mode(L, -1, cstr, &o->pipe_mode); break;
      case 7: ok &= model_bool(L, -1, &o->reject_remote_clients); break;
      case 8:
        if (model_str_eq(L, -1, "unlimited", cstr)) {
          o->max_instances = NP_UNLIMITED_INSTANCES;
        } else if (lua_isinteger(L, -1) && (n = lua_tointeger(L, -1)) >= 1 &&
                   n <= 254) {
          o->max_instances = (unsigned)n;
        } else {
          ok = 0;
        }
        break;
      case 9: ok &= model_u32(L, -1, &o->out_buffer_size); break;
      case 10: ok &= model_u32(L, -1, &o->in_buffer_size); break;
      case 11:
        if (lua_type(L, -1) == LUA_TSTRING) {
          o->security = lua_tolstring(L, -1, &len);
          if (strlen(o->security) != len) ok = 0;
        } else {
          ok = 0;
        }
        break;
      default:
        ok = 0;
    }
    lua_pop(L, 1);
  }
  return ok;
}

static int model_client(lua_State *L, int t, int cstr, np_client_options *o) {
  static const char *const qos[] = {"anonymous", "identification",
                                    "impersonation", "delegation", NULL};
  int ok = 1;
  np_client_options_default(o);
  if (lua_isnoneornil(L, t)) return 1;
  if (lua_type(L, t) != LUA_TTABLE) return 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int k = lua_type(L, -2) == LUA_TSTRING ? model_key(L, -2, client_keys, cstr)
                                           : -1;
    switch (k) {
      case 0: ok &= model_bool(L, -1, &o->read); break;
      case 1: ok &= model_bool(L, -1, &o->write); break;
      case 2:
        if (lua_type(L, -1) == LUA_TSTRING) {
          int i = model_key(L, -1, qos, cstr);
          if (i < 0) ok = 0;
          else o->security_qos_flags = (uint32_t)i << 16;
        } else {
          ok &= model_u32(L, -1, &o->security_qos_flags);
        }
        break;
      case 3: ok &= model_mode(L, -1, cstr, &o->pipe_mode); break;
      default:
        ok = 0;
    }
    lua_pop(L, 1);
  }
  return ok;
}

static int same_server(const np_server_options *a, const np_server_options *b) {
  return a->access_inbound == b->access_inbound &&
         a->access_outbound == b->access_outbound &&
         a->first_pipe_instance == b->first_pipe_instance &&
         a->write_dac == b->write_dac && a->write_owner == b->write_owner &&
         a->access_system_security == b->access_system_security &&
         a->pipe_mode == b->pipe_mode &&
         a->reject_remote_clients == b->reject_remote_clients &&
         a->max_instances == b->max_instances &&
         a->out_buffer_size == b->out_buffer_size &&
         a->in_buffer_size == b->in_buffer_size &&
         a->security == b->security; /* the very string in the table */
}

static int same_client(const np_client_options *a, const np_client_options *b) {
  return a->read == b->read && a->write == b->write &&
         a->security_qos_flags == b->security_qos_flags &&
         a->pipe_mode == b->pipe_mode;
}

/* -------------------------------------------------------------- parsing */

static np_server_options got_server;
static np_client_options got_client;

/* Under lua_pcall: (dummy, opts) -> parse; upvalue 1: 0 server, 1 client. */
static int run_parse(lua_State *L) {
  int top = lua_gettop(L);
  if (lua_tointeger(L, lua_upvalueindex(1)) == 0)
    np_check_server_options(L, 2, &got_server);
  else
    np_check_client_options(L, 2, &got_client);
  if (lua_gettop(L) != top)
    FZ_FAIL("option parser left %d values on the stack", lua_gettop(L) - top);
  return 0;
}

static int strict_mode(void) {
  const char *s = getenv("NP_FUZZ_STRICT");
  return !(s && *s == '0');
}

static unsigned long known_nul_hits;

static void known_nul_finding(const char *side) {
  if (strict_mode())
    FZ_FAIL("%s option parser accepted a key or string with a NUL byte in it "
            "as the real one (C-string compare)", side);
  if (known_nul_hits++ == 0)
    fprintf(stderr,
            "fuzz_options: KNOWN FINDING: the %s option parser compares keys "
            "and enum strings as C strings (e.g. key \"read\\0junk\" is taken "
            "for \"read\")\n",
            side);
}

/* Parse the value at index t as options of one side and judge. */
static void check_side(lua_State *L, int t, int client) {
  int status, want, want_c;
  np_server_options ms, ms_c;
  np_client_options mc, mc_c;
  const char *side = client ? "client" : "server";
  int base = lua_gettop(L);
  want = client ? model_client(L, t, 0, &mc) : model_server(L, t, 0, &ms);
  want_c = client ? model_client(L, t, 1, &mc_c) : model_server(L, t, 1, &ms_c);
  lua_pushinteger(L, client);
  lua_pushcclosure(L, run_parse, 1);
  lua_pushboolean(L, 0); /* #1: a dummy, so the options are argument #2 */
  lua_pushvalue(L, t);
  status = lua_pcall(L, 2, 0, 0);
  if (status == LUA_OK) {
    int same = client ? same_client(&got_client, &mc)
                      : same_server(&got_server, &ms);
    int same_c = client ? same_client(&got_client, &mc_c)
                        : same_server(&got_server, &ms_c);
    if (want && !same)
      FZ_FAIL("%s options parsed differently from the model", side);
    if (!want) {
      if (want_c && same_c) known_nul_finding(side);
      else FZ_FAIL("%s option parser accepted a table the model refuses", side);
    }
  } else {
    if (status != LUA_ERRRUN)
      FZ_FAIL("%s option parser: lua_pcall status %d (%s)", side, status,
              lua_tostring(L, -1));
    if (want)
      FZ_FAIL("%s option parser refused a valid table: %s", side,
              lua_tostring(L, -1));
    if (!fz_is_argerror(L, -1, 2))
      FZ_FAIL("%s option error does not name argument #2: %s", side,
              lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  if (lua_gettop(L) != base) FZ_FAIL("stack imbalance in the harness");
}

/* ------------------------------------------------ through the module */

static const char *const err_names[] = {
    "EOF", "WOULDBLOCK", "NOT_FOUND", "PIPE_BUSY", "BROKEN_PIPE",
    "NOT_CONNECTED", "ACCESS_DENIED", "TIMEOUT", "CLOSED", "CANCELLED",
    "INVALID_NAME", "INVALID_ARGUMENT", "ADDRESS_IN_USE", "NO_MEMORY",
    "IO_ERROR", NULL};

/* After a pcall of create/open with 2 results kept: judge them. Leaves the
 * pipe (or nil) on the stack. */
static void judge_result(lua_State *L, int status, const char *fn) {
  if (status != LUA_OK) {
    if (!fz_is_argerror(L, -1, 2))
      FZ_FAIL("%s raised something that does not name argument #2: %s", fn,
              lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_pushnil(L);
    return;
  }
  /* results: pipe | nil, msg, name, code */
  if (lua_isnil(L, -4)) {
    int i, known = 0;
    const char *name = lua_tostring(L, -2);
    if (lua_type(L, -3) != LUA_TSTRING || !name || !lua_isinteger(L, -1))
      FZ_FAIL("%s failed without (nil, msg, name, code)", fn);
    for (i = 0; err_names[i]; i++) known |= strcmp(name, err_names[i]) == 0;
    if (!known) FZ_FAIL("%s: unknown error name %s", fn, name);
  } else if (lua_type(L, -4) != LUA_TUSERDATA) {
    FZ_FAIL("%s returned a %s", fn, luaL_typename(L, -4));
  }
  lua_pop(L, 3);
}

static void through_module(lua_State *L, int mod, int t, unsigned serial) {
  char name[64];
  int server, client, status;
  /* Under a stable prefix so sockets do not pile up if one is left. */
  snprintf(name, sizeof name, "\\\\.\\pipe\\opt-%u", serial % 4);

  lua_getfield(L, mod, "create");
  lua_pushstring(L, name);
  lua_pushvalue(L, t);
  status = lua_pcall(L, 2, 4, 0);
  judge_result(L, status, "create");
  server = lua_gettop(L);

  lua_getfield(L, mod, "open");
  lua_pushstring(L, name);
  lua_pushvalue(L, t);
  status = lua_pcall(L, 2, 4, 0);
  judge_result(L, status, "open");
  client = lua_gettop(L);

  /* A pipe that came back works as far as info() and state() go. */
  {
    int which[2], i;
    which[0] = server;
    which[1] = client;
    for (i = 0; i < 2; i++) {
      if (lua_isnil(L, which[i])) continue;
      if (luaL_getmetafield(L, which[i], "__index") != LUA_TTABLE)
        FZ_FAIL("pipe without methods");
      lua_getfield(L, -1, "info");
      lua_pushvalue(L, which[i]);
      if (lua_pcall(L, 1, 1, 0) != LUA_OK)
        FZ_FAIL("info() raised: %s", lua_tostring(L, -1));
      lua_pop(L, 1);
      lua_getfield(L, -1, "close");
      lua_pushvalue(L, which[i]);
      if (lua_pcall(L, 1, 0, 0) != LUA_OK)
        FZ_FAIL("close() raised: %s", lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  lua_getfield(L, mod, "step");
  lua_pushinteger(L, 0);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK)
    FZ_FAIL("step raised: %s", lua_tostring(L, -1));
  lua_getfield(L, mod, "pending");
  lua_call(L, 0, 1);
  if (lua_tointeger(L, -1) != 0)
    FZ_FAIL("operations outstanding after create/open/close: %lld",
            (long long)lua_tointeger(L, -1));
  lua_pop(L, 1);
  lua_settop(L, server - 1);
}

/* ----------------------------------------------------------- libFuzzer */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fz_setup_dir();
  fz_safe_env();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned serial;
  fz f = {data, size};
  unsigned flags = fz_u8(&f);
  lua_State *L = fz_state();
  int mod = lua_gettop(L), t, entries = 0;

  switch (flags & 3) {
    case 0:
    case 1: { /* a table */
      lua_newtable(L);
      t = lua_gettop(L);
      while (f.n > 0 && entries++ < 40) {
        push_key(L, &f);
        fz_push_value(L, &f, 2);
        lua_rawset(L, t);
      }
      if (flags & 8) { /* a metatable: the parser must not consult it */
        lua_newtable(L);
        lua_pushvalue(L, t);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, fz_cfunc);
        lua_setfield(L, -2, "__pairs");
        lua_setmetatable(L, t);
      }
      break;
    }
    case 2:
      lua_pushnil(L);
      t = lua_gettop(L);
      break;
    default:
      fz_push_value(L, &f, 1);
      t = lua_gettop(L);
      break;
  }

  check_side(L, t, 0);
  check_side(L, t, 1);
  if (flags & 4) through_module(L, mod, t, serial++);

  lua_close(L);
  return 0;
}
