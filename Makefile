# namedpipe — build and test (Linux natively, Windows via mingw-w64 + Wine).
#
#   make deps          install Debian packages, build Windows Lua 5.4 and
#                      LuaJIT (tools/deps.sh)
#   make linux         build/linux/namedpipe/core.so
#   make windows       build/win/namedpipe/core.dll   (needs build/winlua)
#   make test-linux    run tests/run.lua with lua5.4
#   make test-windows  run tests/run.lua with lua.exe under Wine (tools/wine-run.sh)
#   make test-winjit   the same with a Windows LuaJIT (luajit.exe, lua51.dll)
#   make test-lua5.1 ... test-luajit   the suite with each other Lua on Linux
#   make test          deps + every suite (tools/test-all.sh); last line: total
#                      "N passed, N failed, N skipped"
#   make demo          deps, then examples/demo.lua on Linux and under Wine
#   make rock          build/rock/namedpipe-V-R.src.rock from this checkout (tools/rock.sh)
#   make rock-check    LuaRocks installs that rock natively and cross-built for
#                      Windows, and both trees are run (tools/rock-check.sh)
#   make lint          luacheck (.luacheckrc) over every Lua file of the project
#                      (lua/ tests/ examples/ bench/ tools/ library/); LINT_PATHS=...
#                      for others
#   make clean         remove the module builds (keeps build/winlua, build/winjit,
#                      the wine prefix)
#   make distclean     remove all of build/
#
# Pass test options with TESTARGS, e.g.  make test-linux TESTARGS="-p Basic"
# Extra compiler flags: EXTRA_CFLAGS=...  extra libs: LINUX_LIBS=... WIN_LIBS=...

SHELL := /bin/bash

LINUX_CC ?= gcc
WIN_CC   ?= x86_64-w64-mingw32-gcc
# evaluated when used (after deps installed pkg-config)
LUA_CFLAGS = $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)

LINUX_CFLAGS ?= -O2 -g -Wall -Wextra -Werror -fPIC -shared
# The Windows sources are strict C99 (no GCC extensions), as MSVC builds
# them too; _WIN32_WINNT as the rockspec sets it (Vista: CancelIoEx,
# GetQueuedCompletionStatusEx).
WIN_CFLAGS   ?= -O2 -std=c99 -pedantic -Wall -Wextra -Werror -D_WIN32_WINNT=0x0600 -shared
EXTRA_CFLAGS ?=
LINUX_LIBS   ?=
WIN_LIBS     ?= -lkernel32 -ladvapi32 -lntdll

WINLUA     := build/winlua
WIN_LUA    := $(WINLUA)/bin/lua.exe
WIN_LUADLL := $(WINLUA)/bin/lua54.dll
# LuaJIT for Windows: a C module links lua51.dll, as on LuaJIT's own builds
WINJIT     := build/winjit
WIN_JIT    := $(WINJIT)/bin/luajit.exe
WIN_JITDLL := $(WINJIT)/bin/lua51.dll

# The version is set in one place, the rockspec (its file name and
# `version`): the C module gets it as three numbers, as LuaRocks builds
# pass them (rockspec `defines`).
ROCKSPEC     := $(wildcard rockspec/namedpipe-*.rockspec)
VERSION_DEFS := $(shell echo $(ROCKSPEC) | sed -E \
  's|.*namedpipe-([0-9]+)\.([0-9]+)\.([0-9]+)-[0-9]+\.rockspec|-DNP_VERSION_MAJOR=\1 -DNP_VERSION_MINOR=\2 -DNP_VERSION_PATCH=\3|')

LINUX_SRC := $(wildcard src/*.c src/unix/*.c)
LINUX_HDR := $(wildcard src/*.h src/unix/*.h)
WIN_SRC   := $(wildcard src/*.c src/win/*.c)
WIN_HDR   := $(wildcard src/*.h src/win/*.h)

LINUX_SO  := build/linux/namedpipe/core.so
WIN_DLL   := build/win/namedpipe/core.dll
WINJIT_DLL := build/winjit-mod/namedpipe/core.dll

TESTARGS ?=

# A deleted/renamed source or changed flags leave no newer prerequisite
# behind, so keep a stamp per platform whose content is compiler+flags+file
# list, rewritten (and thus newer) only when that changes.
LINUX_STAMP := build/linux/.inputs
WIN_STAMP   := build/win/.inputs
LINUX_SIG   := $(LINUX_CC) $(LINUX_CFLAGS) $(VERSION_DEFS) $(EXTRA_CFLAGS) $(LINUX_LIBS) $(LINUX_SRC)
WIN_SIG     := $(WIN_CC) $(WIN_CFLAGS) $(VERSION_DEFS) $(EXTRA_CFLAGS) $(WIN_LIBS) $(WIN_SRC)
ifeq ($(filter clean distclean,$(MAKECMDGOALS)),)
ifneq ($(file <$(LINUX_STAMP)),$(LINUX_SIG))
$(shell mkdir -p $(dir $(LINUX_STAMP)))
$(file >$(LINUX_STAMP),$(LINUX_SIG))
endif
ifneq ($(file <$(WIN_STAMP)),$(WIN_SIG))
$(shell mkdir -p $(dir $(WIN_STAMP)))
$(file >$(WIN_STAMP),$(WIN_SIG))
endif
endif

.PHONY: all deps linux windows winjit test test-linux test-windows test-winjit demo clean distclean check check-asan check-valgrind soak \
        rock rock-check lint lint-deps

all: linux windows

deps:
	tools/deps.sh

linux: $(LINUX_SO)

$(LINUX_SO): $(LINUX_SRC) $(LINUX_HDR) $(LINUX_STAMP) Makefile
	@mkdir -p $(@D)
	$(LINUX_CC) $(LINUX_CFLAGS) $(LUA_CFLAGS) -Isrc $(VERSION_DEFS) $(EXTRA_CFLAGS) -o $@ $(LINUX_SRC) $(LINUX_LIBS)

windows: $(WIN_DLL)

$(WIN_DLL): $(WIN_SRC) $(WIN_HDR) $(WIN_LUA) $(WIN_STAMP) Makefile
	@mkdir -p $(@D)
	$(WIN_CC) $(WIN_CFLAGS) -I $(WINLUA)/include -Isrc $(VERSION_DEFS) $(EXTRA_CFLAGS) -o $@ $(WIN_SRC) $(WIN_LUADLL) $(WIN_LIBS)

# lua.exe is written last by tools/deps.sh, so it marks a complete build/winlua
$(WIN_LUA):
	tools/deps.sh

# The Windows module for LuaJIT: the same sources and flags against
# LuaJIT's headers, linked to its lua51.dll (luajit.exe is written last by
# tools/deps.sh, so it marks a complete build/winjit).
winjit: $(WINJIT_DLL)

$(WINJIT_DLL): $(WIN_SRC) $(WIN_HDR) $(WIN_JIT) $(WIN_STAMP) Makefile
	@mkdir -p $(@D)
	$(WIN_CC) $(WIN_CFLAGS) -I $(WINJIT)/include -Isrc $(VERSION_DEFS) $(EXTRA_CFLAGS) -o $@ $(WIN_SRC) $(WIN_JITDLL) $(WIN_LIBS)

$(WIN_JIT):
	tools/deps.sh

test-linux: linux multistate-linux
	lua5.4 tests/run.lua --platform linux $(TESTARGS)

# Every other Lua an app may embed (Linux): the module built against each
# one's headers into build/<lua>/, the whole suite run by its interpreter.
# (Lua 5.4 is `make linux` / `make test-linux`.)
OTHER_LUAS := lua5.1 lua5.2 lua5.3 luajit

build/lua5.1/namedpipe/core.so build/lua5.2/namedpipe/core.so \
build/lua5.3/namedpipe/core.so build/luajit/namedpipe/core.so: \
    build/%/namedpipe/core.so: $(LINUX_SRC) $(LINUX_HDR) $(LINUX_STAMP) Makefile
	@mkdir -p $(@D)
	$(LINUX_CC) $(LINUX_CFLAGS) $$(pkg-config --cflags $*) -Isrc $(VERSION_DEFS) $(EXTRA_CFLAGS) -o $@ $(LINUX_SRC) $(LINUX_LIBS)

.PHONY: test-luas $(addprefix test-,$(OTHER_LUAS))
$(addprefix test-,$(OTHER_LUAS)): test-%: build/%/namedpipe/core.so
	NP_BUILD_DIR=build/$* $* tests/run.lua --platform linux --label $* $(TESTARGS)

test-luas: $(addprefix test-,$(OTHER_LUAS))

test-windows: windows multistate-windows
	tools/wine-run.sh $(WIN_LUA) tests/run.lua --platform windows $(TESTARGS)

# The whole suite under Wine with the Windows LuaJIT and its build of the
# module (NP_BUILD_DIR: tools/wine-run.sh and tests/run.lua take it from there).
test-winjit: winjit
	NP_BUILD_DIR=build/winjit-mod tools/wine-run.sh $(WIN_JIT) tests/run.lua --platform windows \
	  --label winjit $(TESTARGS)

test: deps
	MAKE="$(MAKE)" tools/test-all.sh

# deps first (a fresh machine has no compiler yet), then the builds
demo: deps
	$(MAKE) --no-print-directory linux windows
	LUA_PATH_5_4='lua/?.lua;lua/?/init.lua;;' LUA_CPATH_5_4='build/linux/?.so;;' \
	  lua5.4 examples/demo.lua
	tools/wine-run.sh $(WIN_LUA) examples/demo.lua

# The Linux suite under ASan+UBSan, then under valgrind: no reports allowed.
# The ASan build is also the debug build (NP_DEBUG): the Unix readiness
# rules (src/unix/unix.h, np_readiness) are checked at every wait and event.
ASAN_SO := build/asan/namedpipe/core.so
SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

$(ASAN_SO): $(LINUX_SRC) $(LINUX_HDR) Makefile
	@mkdir -p $(@D)
	$(LINUX_CC) -O1 -g -Wall -Wextra -fPIC -shared -DNP_DEBUG $(SANITIZE) $(LUA_CFLAGS) -Isrc $(VERSION_DEFS) -o $@ $(LINUX_SRC)

check: check-asan check-valgrind

ASAN_LUA := build/asan/lua

$(ASAN_LUA): tests/c/lua_host.c Makefile
	@mkdir -p $(@D)
	$(LINUX_CC) -O1 -g $(SANITIZE) $(LUA_CFLAGS) -o $@ $< $$(pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4) -lm -ldl

check-asan: $(ASAN_SO) $(ASAN_LUA) multistate-linux
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  NP_BUILD_DIR=build/asan $(ASAN_LUA) tests/run.lua --platform linux $(TESTARGS)

check-valgrind: linux multistate-linux
	valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --show-leak-kinds=definite,indirect lua5.4 tests/run.lua --platform linux $(TESTARGS)

# The long runs (tests/soak.lua), Linux then Windows under Wine; figures printed.
# Then the lifecycle model (tests/test_model.lua) for MODEL_SOAK_SECONDS on
# each platform (make test runs it for a few seconds).
SOAKARGS ?=
MODEL_SOAK_SECONDS ?= 120
soak: linux windows
	ulimit -n 8192 2>/dev/null || true; \
	LUA_PATH_5_4='lua/?.lua;lua/?/init.lua;;' LUA_CPATH_5_4='build/linux/?.so;;' \
	  lua5.4 tests/soak.lua $(SOAKARGS)
	NP_WINE_TIMEOUT=1800 tools/wine-run.sh $(WIN_LUA) tests/soak.lua $(SOAKARGS)
	NP_MODEL_SECONDS=$(MODEL_SOAK_SECONDS) lua5.4 tests/run.lua --platform linux -p TestModel
	NP_WINE_TIMEOUT=1800 NP_MODEL_SECONDS=$(MODEL_SOAK_SECONDS) \
	  tools/wine-run.sh $(WIN_LUA) tests/run.lua --platform windows -p TestModel

clean:
	rm -rf build/linux build/win build/asan build/multistate build/fuzz build/winjit-mod \
	  build/lua5.1 build/lua5.2 build/lua5.3 build/luajit

distclean:
	rm -rf build

# Benchmarks (bench/run.sh, bench/README.md): namedpipe against plain C (and
# luv on Linux), one table per platform. `make bench` takes a few minutes;
# `make bench-quick` is the smoke run (tiny sizes, bytes checked, no timing
# asserted). Options: BENCHARGS="--runs 3 --platform linux --only churn".
BENCHARGS ?=
.PHONY: bench bench-quick
bench:
	MAKE="$(MAKE)" bench/run.sh $(BENCHARGS)

bench-quick:
	MAKE="$(MAKE)" bench/run.sh --quick $(BENCHARGS)

# ---------------------------------------------------------------- packaging
# The source rock from this checkout, and the proof that LuaRocks builds it:
# natively into a new tree, and cross-built for Windows with mingw-w64 (run
# under Wine). `make test` runs rock-check as a gate.
rock:
	tools/rock.sh

rock-check: deps
	tools/rock-check.sh

# luacheck (Debian lua-check) with .luacheckrc, over every Lua file of the
# project; `make test` runs it as a gate.
LINT_PATHS ?= lua tests examples bench tools library .luacheckrc
lint: lint-deps
	luacheck $(LINT_PATHS)

lint-deps:
	@command -v luacheck >/dev/null || NP_EXTRA_PACKAGES="lua-check" tools/deps.sh

# ---------------------------------------------------------------- fuzzing
# libFuzzer targets over the Linux sources (tests/fuzz/), built with clang:
#   make fuzz                 each target for FUZZ_SECONDS (default 30)
#   make fuzz FUZZ_SECONDS=600
# New corpus entries go to build/fuzz/corpus-NAME (the seeds in
# tests/fuzz/corpus/NAME are read, never written); a crash is saved as
# build/fuzz/crash-* and fails the target. Replay one input:
#   build/fuzz/fuzz_options build/fuzz/crash-...
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 30
FUZZ_ARGS    ?=
FUZZ_TARGETS := fuzz_options fuzz_names
FUZZ_BINS    := $(addprefix build/fuzz/,$(FUZZ_TARGETS))
FUZZ_FLAGS   := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer -Wall -Wextra

.PHONY: fuzz fuzz-build fuzz-deps

fuzz-build: fuzz-deps $(FUZZ_BINS)

# clang and its fuzzer runtime are only needed here, not by make test
fuzz-deps:
	@command -v $(FUZZ_CC) >/dev/null && [ -n "$$(ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a 2>/dev/null)" ] \
	  || NP_EXTRA_PACKAGES="clang libclang-rt-14-dev" tools/deps.sh

build/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz_common.h $(LINUX_SRC) $(LINUX_HDR) Makefile
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(LUA_CFLAGS) -Isrc $(VERSION_DEFS) -o $@ $< $(LINUX_SRC) \
	  $$(pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4) -lm -ldl

fuzz: fuzz-deps $(FUZZ_BINS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus-$$t; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  build/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 \
	    -print_final_stats=1 -artifact_prefix=build/fuzz/ $(FUZZ_ARGS) \
	    build/fuzz/corpus-$$t tests/fuzz/corpus/$$t 2>build/fuzz/$$t.log \
	    || { tail -n 60 build/fuzz/$$t.log; echo "fuzz: $$t FAILED (log: build/fuzz/$$t.log)"; exit 1; }; \
	  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+[[:space:]]+DONE)' build/fuzz/$$t.log | tr '\n' ' '; echo; \
	  grep -m1 'KNOWN FINDING' build/fuzz/$$t.log || true; \
	done; echo "fuzz: all targets clean"

# ------------------------------------------------------ many Lua states
# tests/c/multi_state.c: several Lua states in one process (round-robin and
# one thread per state); tests/test_multistate.lua runs what is built here.
#   make multistate        the native, ASan and mingw builds
#   make multistate-run    run them: native, under valgrind, ASan, Wine
MS_SRC  := tests/c/multi_state.c
MS_BIN  := build/multistate/multi_state
MS_ASAN := build/asan/multi_state
MS_EXE  := build/multistate/multi_state.exe
MS_DLL  := build/multistate/lua54.dll
MS_LUALIBS = $$(pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4) -lm -ldl

.PHONY: multistate multistate-linux multistate-windows multistate-run

multistate: multistate-linux multistate-windows

multistate-linux: $(MS_BIN) $(MS_ASAN)

multistate-windows: $(MS_EXE) $(MS_DLL)

$(MS_BIN): $(MS_SRC) Makefile
	@mkdir -p $(@D)
	$(LINUX_CC) -O2 -g -Wall -Wextra -Werror -pthread $(LUA_CFLAGS) -o $@ $< $(MS_LUALIBS)

$(MS_ASAN): $(MS_SRC) Makefile
	@mkdir -p $(@D)
	$(LINUX_CC) -O1 -g $(SANITIZE) -pthread $(LUA_CFLAGS) -o $@ $< $(MS_LUALIBS)

$(MS_EXE): $(MS_SRC) $(WIN_LUA) Makefile
	@mkdir -p $(@D)
	$(WIN_CC) -O2 -Wall -Wextra -Werror -I $(WINLUA)/include -o $@ $< $(WIN_LUADLL)

# the exe finds lua54.dll beside it; core.dll then binds to that same DLL
$(MS_DLL): $(WIN_LUA)
	@mkdir -p $(@D)
	cp $(WIN_LUADLL) $@

multistate-run: multistate linux windows $(ASAN_SO)
	$(MS_BIN)
	valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --show-leak-kinds=definite,indirect $(MS_BIN) 4 50
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 NP_BUILD_DIR=build/asan $(MS_ASAN)
	tools/wine-run.sh $(MS_EXE)
