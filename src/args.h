/* args.h - argument errors and checks shared by the module's functions and
 * methods (args.c). */
#ifndef NP_ARGS_H
#define NP_ARGS_H

#include "lua.h"
#include "np.h"

/* The pipe metatable's name in the registry (and a pipe's __name). */
#define NP_PIPE_MT "namedpipe.pipe"

NP_INTERNAL_BEGIN

/* "bad argument #n to 'f' (msg)", counting self as #1 in a method call;
 * these never return. */
int np_arg_error(lua_State *L, int arg, const char *msg);
/* "... (expected expected, got <type or __name>)" */
int np_type_error(lua_State *L, int arg, const char *expected);
/* The integer at arg, or an argument error. */
lua_Integer np_check_integer(lua_State *L, int arg);
/* The index of the string at arg in the NULL-ended list (def when arg is
 * absent; NULL: required), or an argument error. */
int np_check_option(lua_State *L, int arg, const char *def,
                    const char *const list[]);

NP_INTERNAL_END

#endif
