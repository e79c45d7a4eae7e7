/*
 * options.c - Tokio's ServerOptions / ClientOptions as Lua option tables.
 *
 * Every key is checked: an unknown key, a wrong type or an out-of-range value
 * raises an argument error naming the key, never a silent default (a typo in
 * `frist_pipe_instance` must not quietly drop the protection it asked for).
 */
#include <string.h>

#include "lauxlib.h"
#include "lua.h"

#include "compat.h"

#include "args.h"
#include "np.h"
#include "options.h"

/* SECURITY_IDENTIFICATION from winnt.h; Tokio's default QoS level. */
#define NP_SECURITY_IDENTIFICATION 0x00010000u
/* The four impersonation levels, as SECURITY_*  << 16 in winnt.h. */
static const char *const qos_level_names[] = {"anonymous", "identification",
                                              "impersonation", "delegation",
                                              NULL};

void np_server_options_default(np_server_options *o) {
  o->access_inbound = 1;
  o->access_outbound = 1;
  o->first_pipe_instance = 0;
  o->write_dac = 0;
  o->write_owner = 0;
  o->access_system_security = 0;
  o->pipe_mode = NP_MODE_BYTE;
  o->reject_remote_clients = 1;
  o->max_instances = NP_UNLIMITED_INSTANCES;
  o->out_buffer_size = NP_DEFAULT_BUFFER_SIZE;
  o->in_buffer_size = NP_DEFAULT_BUFFER_SIZE;
  o->security = NULL;
}

void np_client_options_default(np_client_options *o) {
  o->read = 1;
  o->write = 1;
  o->security_qos_flags = NP_SECURITY_IDENTIFICATION;
  o->pipe_mode = NP_MODE_BYTE;
}

/* The value at the top of the stack is the Lua string `lit`, exactly: a
 * C-string compare would take "message\0junk" for "message". */
static int is_string(lua_State *L, const char *lit) {
  size_t len;
  const char *s;
  if (lua_type(L, -1) != LUA_TSTRING) return 0;
  s = lua_tolstring(L, -1, &len);
  return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

/* Raise "bad argument #arg to 'fn' (option 'key': why)". */
static int option_error(lua_State *L, int arg, const char *key,
                        const char *why) {
  return np_arg_error(
      L, arg, lua_pushfstring(L, "option '%s': %s", key, why));
}

static int opt_bool(lua_State *L, int arg, const char *key) {
  if (!lua_isboolean(L, -1))
    option_error(L, arg, key,
                 lua_pushfstring(L, "boolean expected, got %s",
                                 luaL_typename(L, -1)));
  return lua_toboolean(L, -1);
}

static np_mode opt_mode(lua_State *L, int arg, const char *key) {
  if (is_string(L, "byte")) return NP_MODE_BYTE;
  if (is_string(L, "message")) return NP_MODE_MESSAGE;
  option_error(L, arg, key, "\"byte\" or \"message\" expected");
  return NP_MODE_BYTE;
}

static uint32_t opt_u32(lua_State *L, int arg, const char *key) {
  lua_Integer n;
  if (!lua_isinteger(L, -1))
    option_error(L, arg, key, "integer expected");
  n = lua_tointeger(L, -1);
  if (n < 0 || n > (lua_Integer)0xFFFFFFFFu)
    option_error(L, arg, key, "expected 0 to 4294967295");
  return (uint32_t)n;
}

static unsigned opt_max_instances(lua_State *L, int arg, const char *key) {
  lua_Integer n;
  if (is_string(L, "unlimited")) return NP_UNLIMITED_INSTANCES;
  if (!lua_isinteger(L, -1))
    option_error(L, arg, key, "integer 1..254 or \"unlimited\" expected");
  n = lua_tointeger(L, -1);
  /* 255 is PIPE_UNLIMITED_INSTANCES; 0 and >255 are refused by Windows
   * (and accepted by Wine), so refuse them here on every platform. */
  if (n < 1 || n > 254)
    option_error(L, arg, key, "expected 1 to 254, or \"unlimited\"");
  return (unsigned)n;
}

static const char *opt_string(lua_State *L, int arg, const char *key) {
  size_t len;
  const char *s;
  if (lua_type(L, -1) != LUA_TSTRING)
    option_error(L, arg, key, "string expected");
  s = lua_tolstring(L, -1, &len);
  if (strlen(s) != len) option_error(L, arg, key, "contains a NUL byte");
  return s;
}

static uint32_t opt_qos(lua_State *L, int arg, const char *key) {
  if (lua_type(L, -1) == LUA_TSTRING) {
    int i;
    for (i = 0; qos_level_names[i]; i++)
      if (is_string(L, qos_level_names[i])) return (uint32_t)i << 16;
    option_error(L, arg, key,
                 "\"anonymous\", \"identification\", \"impersonation\", "
                 "\"delegation\" or integer flags expected");
  }
  return opt_u32(L, arg, key);
}

/* Walks the table at `arg` (nil = all defaults); calls `set` for each key. */
typedef int (*set_option_fn)(lua_State *L, int arg, const char *key,
                             void *opts);

static void parse_table(lua_State *L, int arg, set_option_fn set, void *opts) {
  if (lua_isnoneornil(L, arg)) return;
  if (lua_type(L, arg) != LUA_TTABLE) np_type_error(L, arg, "table");
  /* The options are read as they are (lua_next): one a metatable would
   * supply (__index) would be dropped without a word, a protection such
   * as first_pipe_instance among them. */
  if (lua_getmetatable(L, arg))
    np_arg_error(L, arg, "a table without a metatable expected (options are "
                         "read as they are, not through one)");
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    const char *key;
    size_t len;
    if (lua_type(L, -2) != LUA_TSTRING)
      np_arg_error(L, arg, "option keys must be strings");
    key = lua_tolstring(L, -2, &len);
    if (strlen(key) != len) /* "read\0" must not pass for "read" */
      np_arg_error(L, arg, "option key contains a NUL byte");
    if (!set(L, arg, key, opts))
      np_arg_error(L, arg, lua_pushfstring(L, "unknown option '%s'", key));
    lua_pop(L, 1);
  }
}

static int set_server_option(lua_State *L, int arg, const char *key,
                             void *opts) {
  np_server_options *o = (np_server_options *)opts;
  if (strcmp(key, "access_inbound") == 0)
    o->access_inbound = opt_bool(L, arg, key);
  else if (strcmp(key, "access_outbound") == 0)
    o->access_outbound = opt_bool(L, arg, key);
  else if (strcmp(key, "first_pipe_instance") == 0)
    o->first_pipe_instance = opt_bool(L, arg, key);
  else if (strcmp(key, "write_dac") == 0)
    o->write_dac = opt_bool(L, arg, key);
  else if (strcmp(key, "write_owner") == 0)
    o->write_owner = opt_bool(L, arg, key);
  else if (strcmp(key, "access_system_security") == 0)
    o->access_system_security = opt_bool(L, arg, key);
  else if (strcmp(key, "pipe_mode") == 0)
    o->pipe_mode = opt_mode(L, arg, key);
  else if (strcmp(key, "reject_remote_clients") == 0)
    o->reject_remote_clients = opt_bool(L, arg, key);
  else if (strcmp(key, "max_instances") == 0)
    o->max_instances = opt_max_instances(L, arg, key);
  else if (strcmp(key, "out_buffer_size") == 0)
    o->out_buffer_size = opt_u32(L, arg, key);
  else if (strcmp(key, "in_buffer_size") == 0)
    o->in_buffer_size = opt_u32(L, arg, key);
  else if (strcmp(key, "security") == 0)
    o->security = opt_string(L, arg, key); /* stays on the caller's table */
  else
    return 0;
  return 1;
}

static int set_client_option(lua_State *L, int arg, const char *key,
                             void *opts) {
  np_client_options *o = (np_client_options *)opts;
  if (strcmp(key, "read") == 0)
    o->read = opt_bool(L, arg, key);
  else if (strcmp(key, "write") == 0)
    o->write = opt_bool(L, arg, key);
  else if (strcmp(key, "security_qos_flags") == 0)
    o->security_qos_flags = opt_qos(L, arg, key);
  else if (strcmp(key, "pipe_mode") == 0)
    o->pipe_mode = opt_mode(L, arg, key);
  else
    return 0;
  return 1;
}

void np_check_server_options(lua_State *L, int arg, np_server_options *o) {
  np_server_options_default(o);
  parse_table(L, arg, set_server_option, o);
}

void np_check_client_options(lua_State *L, int arg, np_client_options *o) {
  np_client_options_default(o);
  parse_table(L, arg, set_client_option, o);
}
