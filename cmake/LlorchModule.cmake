# One static library per source folder, so a module builds and tests on its
# own:  llorch_module(net SOURCES ... DEPS llorch_core dep::uv).
# Every module is also added to the interface target llorch_all that the
# executable links.
add_library(llorch_all INTERFACE)

function(llorch_module name)
  cmake_parse_arguments(M "" "" "SOURCES;DEPS" ${ARGN})
  add_library(llorch_${name} STATIC ${M_SOURCES})
  target_include_directories(llorch_${name} PUBLIC ${LLORCH_INCLUDE_DIR}
                             PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_options(llorch_${name} PRIVATE $<$<COMPILE_LANGUAGE:C>:${LLORCH_WARNINGS}>)
  target_link_libraries(llorch_${name} PUBLIC ${M_DEPS})
  if(LLORCH_HAVE_CUDA)
    target_compile_definitions(llorch_${name} PUBLIC LLORCH_HAVE_CUDA=1)
  endif()
  target_link_libraries(llorch_all INTERFACE llorch_${name})
endfunction()

# A cmocka unit test: llorch_unit_test(test_http SOURCES test_http.c DEPS llorch_net)
function(llorch_unit_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_compile_options(${name} PRIVATE ${LLORCH_WARNINGS})
  target_include_directories(${name} PRIVATE ${LLORCH_INCLUDE_DIR} ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/tests/common)
  target_link_libraries(${name} PRIVATE ${T_DEPS} dep::cmocka)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "unit;${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "LLORCH_BIN=$<TARGET_FILE:llorch>")
endfunction()
