# Finds llorch's dependencies. Each is found by find_library/find_path with
# pkg-config hints, so CMAKE_PREFIX_PATH, PKG_CONFIG_PATH, CPATH and
# LIBRARY_PATH all work (the GPU machine unpacks Debian packages under /tmp).

function(llorch_find_dep target pcname header libname)
  pkg_check_modules(PC_${target} QUIET ${pcname})
  find_path(${target}_INCLUDE_DIR ${header}
            HINTS ${PC_${target}_INCLUDE_DIRS} ENV CPATH)
  find_library(${target}_LIBRARY NAMES ${libname}
               HINTS ${PC_${target}_LIBRARY_DIRS} ENV LIBRARY_PATH)
  if(NOT ${target}_INCLUDE_DIR OR NOT ${target}_LIBRARY)
    message(FATAL_ERROR "llorch: ${pcname} not found (header ${header}, library ${libname}); "
                        "run scripts/install-deps.sh or set CMAKE_PREFIX_PATH")
  endif()
  add_library(dep::${target} UNKNOWN IMPORTED GLOBAL)
  set_target_properties(dep::${target} PROPERTIES
    IMPORTED_LOCATION "${${target}_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${${target}_INCLUDE_DIR}")
  message(STATUS "llorch: ${pcname}: ${${target}_LIBRARY}")
endfunction()

llorch_find_dep(uv libuv uv.h uv)
llorch_find_dep(cjson libcjson cjson/cJSON.h cjson)
llorch_find_dep(yaml yaml-0.1 yaml.h yaml)
llorch_find_dep(pcre2 libpcre2-8 pcre2.h pcre2-8)

# llhttp ships as C sources in Debian (node-llhttp): compile them ourselves.
find_path(LLHTTP_H llhttp.h HINTS "${LLORCH_LLHTTP_INCLUDE}" ENV CPATH NO_CACHE)
if(NOT LLHTTP_H OR NOT EXISTS "${LLORCH_LLHTTP_DIR}/llhttp.c")
  message(FATAL_ERROR "llorch: llhttp sources not found in LLORCH_LLHTTP_DIR=${LLORCH_LLHTTP_DIR} "
                      "(header dir ${LLORCH_LLHTTP_INCLUDE}); install node-llhttp")
endif()
add_library(llhttp_static STATIC
  "${LLORCH_LLHTTP_DIR}/api.c" "${LLORCH_LLHTTP_DIR}/http.c" "${LLORCH_LLHTTP_DIR}/llhttp.c")
target_include_directories(llhttp_static PUBLIC "${LLHTTP_H}")
set_target_properties(llhttp_static PROPERTIES C_EXTENSIONS ON)
target_compile_options(llhttp_static PRIVATE -w)
add_library(dep::llhttp ALIAS llhttp_static)

if(LLORCH_BUILD_TESTS)
  pkg_check_modules(PC_cmocka QUIET cmocka)
  find_path(CMOCKA_INCLUDE_DIR cmocka.h HINTS ${PC_cmocka_INCLUDE_DIRS} ENV CPATH)
  find_library(CMOCKA_LIBRARY NAMES cmocka HINTS ${PC_cmocka_LIBRARY_DIRS} ENV LIBRARY_PATH)
  if(NOT CMOCKA_INCLUDE_DIR OR NOT CMOCKA_LIBRARY)
    message(FATAL_ERROR "llorch: cmocka not found (tests); install libcmocka-dev or -DLLORCH_BUILD_TESTS=OFF")
  endif()
  add_library(dep::cmocka UNKNOWN IMPORTED GLOBAL)
  set_target_properties(dep::cmocka PROPERTIES IMPORTED_LOCATION "${CMOCKA_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${CMOCKA_INCLUDE_DIR}")
endif()
