/*
 * lua_host.c - a minimal `lua script.lua args...` for `make check`: built
 * with the same sanitizers as the module, so ASan's runtime is in the
 * process from the start without LD_PRELOAD (which would leak into every
 * child the tests start, socat included). lua_close runs at the end, so
 * LeakSanitizer sees everything the module should have freed. It also
 * lets the out-of-memory tests cap Lua's memory (capped_alloc).
 */
#include <stdio.h>
#include <stdlib.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

/* The allocator, with a cap the out-of-memory tests set through
 * np_test_memory_limit(extra): from then on the state may take `extra`
 * more bytes (a negative extra lifts the cap). Shrinking never fails, as
 * Lua requires. */
static size_t mem_used, mem_limit = (size_t)-1;

static void *capped_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  void *q;
  (void)ud;
  if (!p) osize = 0;
  if (nsize == 0) {
    free(p);
    mem_used -= osize;
    return NULL;
  }
  if (nsize > osize && mem_used + (nsize - osize) > mem_limit) return NULL;
  q = realloc(p, nsize);
  if (q) mem_used = mem_used - osize + nsize;
  return q;
}

static int memory_limit(lua_State *L) {
  lua_Integer extra = luaL_checkinteger(L, 1);
  mem_limit = extra < 0 ? (size_t)-1 : mem_used + (size_t)extra;
  return 0;
}

static int traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L;
  int i, status;
  if (argc < 2) {
    fprintf(stderr, "usage: %s script.lua [args]\n", argv[0]);
    return 2;
  }
  L = lua_newstate(capped_alloc, NULL);
  if (!L) return 1;
  luaL_openlibs(L);
  lua_register(L, "np_test_memory_limit", memory_limit);
  lua_createtable(L, argc, 1); /* arg, as lua.c builds it */
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, traceback);
  status = luaL_loadfile(L, argv[1]);
  if (status == LUA_OK) {
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - 2, 0, -(argc - 2) - 2);
  }
  if (status != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
