/*
 * args.c - argument errors for the module's functions and methods, and the
 * checks that raise them (args.h).
 */
#include <string.h>

#include "lauxlib.h"
#include "lua.h"

#include "compat.h"

#include "args.h"

/* "bad argument #n to 'f' (msg)", counting self as argument #1 in a method
 * call too (luaL_argerror does not count it there): the numbering of the
 * Lua layer's own checks (lua/namedpipe.lua), so that an argument has the
 * same number whichever form of a method was called. */
/* The key under which table t holds the value on the top, or NULL. */
static const char *key_of(lua_State *L, int t) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_rawequal(L, -1, -3) && lua_type(L, -2) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -2); /* held by the table */
      lua_pop(L, 2);
      return k;
    }
    lua_pop(L, 1);
  }
  return NULL;
}

/* The running function's name among the pipe methods, or NULL: for a
 * call whose site names nothing (a tail call; Lua 5.1 and LuaJIT do not
 * look the name up as luaL_argerror does from 5.2 on). */
static const char *method_name(lua_State *L) {
  lua_Debug ar;
  const char *name = NULL;
  int top = lua_gettop(L);
  if (lua_getstack(L, 0, &ar) && lua_getinfo(L, "f", &ar)) {
    luaL_getmetatable(L, NP_PIPE_MT);
    if (lua_type(L, -1) == LUA_TTABLE &&
        lua_getfield(L, -1, "__index") == LUA_TTABLE) {
      lua_pushvalue(L, -3);
      name = key_of(L, lua_gettop(L) - 1);
    }
  }
  lua_settop(L, top);
  return name;
}

static int is_sep(char c) { return c == '/' || c == '\\'; }

/* A chunk of this library's Lua layer: namedpipe.lua, its four modules in
 * a directory namedpipe/, and the wrappers it compiles ("=namedpipe.read"). */
static int library_source(const char *src) {
  static const char *const modules[] = {"task.lua", "serve.lua", "framing.lua",
                                        "compat.lua", NULL};
  const char *base, *dir;
  int i;
  if (strncmp(src, "=namedpipe.", 11) == 0) return 1;
  if (src[0] != '@') return 0;
  /* base: the last component of the file name; dir: the one before it */
  base = src + strlen(src);
  while (base > src + 1 && !is_sep(base[-1])) base--;
  if (strcmp(base, "namedpipe.lua") == 0) return 1;
  if (base == src + 1) return 0;
  dir = base - 1;
  while (dir > src + 1 && !is_sep(dir[-1])) dir--;
  if (base - 1 - dir != 9 || strncmp(dir, "namedpipe", 9) != 0) return 0;
  for (i = 0; modules[i]; i++)
    if (strcmp(base, modules[i]) == 0) return 1;
  return 0;
}

/* Where the error is the caller's: as luaL_where(L, 1), except that a
 * call the Lua layer made for the caller (a waiting form handed over, an
 * np.open that retries) is passed through to the caller's own line. */
static void push_where(lua_State *L) {
  lua_Debug ar;
  int level;
  for (level = 1; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar)) break;
    if (ar.currentline > 0 && !library_source(ar.source)) {
      lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
      return;
    }
    /* through the layer's frames and the C calls between them only */
    if (level == 1 && !library_source(ar.source)) break;
  }
  lua_pushliteral(L, "");
}

int np_arg_error(lua_State *L, int arg, const char *msg) {
  lua_Debug ar;
  const char *name = NULL;
  if (lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar)) name = ar.name;
  if (!name) name = method_name(L);
  if (!name)
    /* no name at the call site (pcall(np.step, ...)): not a method call
     * either, so luaL_argerror numbers alike, and finds the global name */
    return luaL_argerror(L, arg, msg);
  push_where(L);
  lua_pushfstring(L, "bad argument #%d to '%s' (%s)", arg, name, msg);
  lua_concat(L, 2);
  return lua_error(L);
}

int np_type_error(lua_State *L, int arg, const char *expected) {
  const char *got;
  if (luaL_getmetafield(L, arg, "__name") == LUA_TSTRING)
    got = lua_tostring(L, -1);
  else if (lua_type(L, arg) == LUA_TLIGHTUSERDATA)
    got = "light userdata";
  else
    got = luaL_typename(L, arg);
  return np_arg_error(L, arg,
                   lua_pushfstring(L, "%s expected, got %s", expected, got));
}

lua_Integer np_check_integer(lua_State *L, int arg) {
  int isnum;
  lua_Integer n = lua_tointegerx(L, arg, &isnum);
  if (!isnum) {
    if (lua_isnumber(L, arg))
      np_arg_error(L, arg, "number has no integer representation");
    else
      np_type_error(L, arg, "number");
  }
  return n;
}

/* The index of the string at arg in list (def when arg is absent); the
 * whole string is compared, embedded NULs included. */
int np_check_option(lua_State *L, int arg, const char *def,
                        const char *const list[]) {
  const char *name = def;
  size_t len = def ? strlen(def) : 0;
  int i;
  if (!def || !lua_isnoneornil(L, arg)) {
    if (!lua_isstring(L, arg)) np_type_error(L, arg, "string");
    name = lua_tolstring(L, arg, &len);
  }
  for (i = 0; list[i]; i++)
    if (strlen(list[i]) == len && memcmp(list[i], name, len) == 0) return i;
  {
    /* what was given, then what would do: "a", "b" or "c" expected */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "invalid option '%s%s'; ", name,
                    strlen(name) != len ? "\\0..." : ""); /* (where a NUL is) */
    luaL_addvalue(&b);
    for (i = 0; list[i]; i++) {
      if (i > 0) luaL_addstring(&b, list[i + 1] ? ", " : " or ");
      luaL_addchar(&b, '"');
      luaL_addstring(&b, list[i]);
      luaL_addchar(&b, '"');
    }
    luaL_addstring(&b, " expected");
    luaL_pushresult(&b);
    return np_arg_error(L, arg, lua_tostring(L, -1));
  }
}
