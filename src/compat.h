/*
 * compat.h - the one place where the Lua versions differ for the C files:
 * 5.1 (and LuaJIT 2.1, which is 5.1 to C), 5.2, 5.3, 5.4. The C files are
 * written against 5.4; what an older version lacks is supplied here, with
 * the 5.4 behaviour the code relies on, and nothing else changes.
 *
 * The one difference that is not a missing function: before 5.2 a C
 * function cannot be suspended (a coroutine cannot yield across it), so a
 * method whose waiting form must suspend a task cannot run that form from
 * C. NP_C_CAN_YIELD says whether it can; where it cannot, the method hands
 * the call back to its Lua wrapper (binding.c, divert).
 */
#ifndef NP_COMPAT_H
#define NP_COMPAT_H

#include "lauxlib.h"
#include "lua.h"

#if LUA_VERSION_NUM >= 502
#define NP_C_CAN_YIELD 1
#else
#define NP_C_CAN_YIELD 0
#endif

/* A task's read or write can wait from its C method (task_waits.c, np_task_wait
 * and np_task_write: lua_yieldk with a continuation taking a lua_KContext,
 * as 5.3 has it); elsewhere the Lua layer makes the task wait. */
#if LUA_VERSION_NUM >= 503
#define NP_TASK_WAITS_IN_C 1
#else
#define NP_TASK_WAITS_IN_C 0
#endif

#ifndef LUA_OK
#define LUA_OK 0
#endif

#if LUA_VERSION_NUM < 502

#define lua_rawlen(L, i) lua_objlen(L, (i))
#ifndef luaL_newlibtable /* (LuaJIT 2.1 has these two and luaL_setfuncs) */
#define luaL_newlibtable(L, l) \
  lua_createtable(L, 0, (int)(sizeof(l) / sizeof((l)[0]) - 1))
#define luaL_newlib(L, l) (luaL_newlibtable(L, l), np_setfuncs(L, l, 0))
#endif
#define luaL_setfuncs(L, l, nup) np_setfuncs(L, l, nup)

static inline int np_absindex(lua_State *L, int i) {
  return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}
#define lua_absindex np_absindex

/* 5.2's luaL_setfuncs: every function shares the nup values on the top. */
static inline void np_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  int i;
  for (; l->name; l++) {
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}

static inline lua_Number np_tonumberx(lua_State *L, int i, int *isnum) {
  lua_Number n = lua_tonumber(L, i);
  if (isnum) *isnum = n != 0 || lua_isnumber(L, i);
  return n;
}
#define lua_tonumberx np_tonumberx

#endif /* < 5.2 */

#if LUA_VERSION_NUM < 503

/* Before 5.3 every number is a float: an integer is one with an integral
 * value that fits lua_Integer (what 5.3's string-to-integer and
 * float-to-integer conversions accept). */
static inline int np_float_is_integer(lua_Number n, lua_Integer *out) {
  /* 2^63 as a float: every lua_Integer is below it */
  const lua_Number top = (lua_Number)((lua_Integer)1 << (sizeof(lua_Integer) * 8 - 2)) * 2;
  if (!(n >= -top && n < top) || (lua_Number)(lua_Integer)n != n) return 0;
  if (out) *out = (lua_Integer)n;
  return 1;
}

static inline int np_isinteger(lua_State *L, int i) {
  return lua_type(L, i) == LUA_TNUMBER &&
         np_float_is_integer(lua_tonumber(L, i), NULL);
}
#define lua_isinteger np_isinteger

#undef lua_tointegerx
static inline lua_Integer np_tointegerx(lua_State *L, int i, int *isnum) {
  lua_Integer n = 0;
  int ok = lua_isnumber(L, i) && np_float_is_integer(lua_tonumber(L, i), &n);
  if (isnum) *isnum = ok;
  return n;
}
#define lua_tointegerx np_tointegerx

/* 5.3's lua_getfield and luaL_getmetafield say what they found. */
static inline int np_getfield(lua_State *L, int i, const char *k) {
  lua_getfield(L, i, k);
  return lua_type(L, -1);
}
#define lua_getfield(L, i, k) np_getfield(L, (i), (k))

static inline int np_getmetafield(lua_State *L, int i, const char *k) {
  return luaL_getmetafield(L, i, k) ? lua_type(L, -1) : LUA_TNIL;
}
#define luaL_getmetafield(L, i, k) np_getmetafield(L, (i), (k))

/* 5.3's luaL_newmetatable names the type (__name), which error messages
 * use. */
static inline int np_newmetatable(lua_State *L, const char *name) {
  if (!luaL_newmetatable(L, name)) return 0;
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  return 1;
}
#define luaL_newmetatable(L, name) np_newmetatable(L, (name))

#endif /* < 5.3 */

#if LUA_VERSION_NUM < 504

/* 5.4's user values, numbered: before it a userdata has one value (5.1:
 * its environment), which here is a table holding them. Only a userdata
 * made by lua_newuserdatauv with nuv > 0 has one. */
static inline void *np_newuserdatauv(lua_State *L, size_t size, int nuv) {
  void *p = lua_newuserdata(L, size);
  if (nuv > 0) {
    lua_createtable(L, nuv, 0);
#if LUA_VERSION_NUM < 502
    lua_setfenv(L, -2);
#else
    lua_setuservalue(L, -2);
#endif
  }
  return p;
}
#define lua_newuserdatauv np_newuserdatauv

static inline void np_push_uservalues(lua_State *L, int i) {
#if LUA_VERSION_NUM < 502
  lua_getfenv(L, i);
#else
  lua_getuservalue(L, i);
#endif
}

static inline int np_getiuservalue(lua_State *L, int i, int n) {
  np_push_uservalues(L, i);
  lua_rawgeti(L, -1, n);
  lua_remove(L, -2);
  return lua_type(L, -1);
}
#define lua_getiuservalue np_getiuservalue

static inline int np_setiuservalue(lua_State *L, int i, int n) {
  i = lua_absindex(L, i);
  np_push_uservalues(L, i);
  lua_insert(L, -2);
  lua_rawseti(L, -2, n);
  lua_pop(L, 1);
  return 1;
}
#define lua_setiuservalue np_setiuservalue

#endif /* < 5.4 */

#endif
