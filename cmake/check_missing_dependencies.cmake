# ctest packaging.missing_dependencies: configures msda with Highway hidden, then with
# GoogleTest hidden and the tests on, and checks that each configure stops with the message
# that names the package and the install commands (cmake/MissingDependency.cmake).
function(expect_message name expected)
  set(build "${WORK_DIR}/${name}")
  file(REMOVE_RECURSE "${build}")
  execute_process(
    COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${build}" -G "${GENERATOR}" ${ARGN}
    RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(result EQUAL 0)
    message(FATAL_ERROR "${name}: the configure succeeded; it must stop:\n${output}")
  endif()
  foreach(text IN LISTS expected)
    string(FIND "${output}" "${text}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "${name}: the message lacks \"${text}\":\n${output}")
    endif()
  endforeach()
  if(output MATCHES "Could not find a package configuration file")
    message(FATAL_ERROR "${name}: CMake's generic text instead of msda's:\n${output}")
  endif()
  message(STATUS "${name}: stops with msda's message")
endfunction()

expect_message(no_highway
  "Google Highway;apt-get install libhwy-dev;dnf install highway-devel;brew install highway;conda-forge libhwy"
  -DCMAKE_DISABLE_FIND_PACKAGE_hwy=ON)
expect_message(no_googletest
  "GoogleTest;apt-get install libgtest-dev;dnf install gtest-devel;brew install googletest;-DMSDA_BUILD_TESTS=OFF"
  -DMSDA_BUILD_TESTS=ON -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON)
