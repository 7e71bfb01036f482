# Driven by ctest: install the freshly built library into a scratch prefix, then build and run
# the consumer against that prefix only.
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}")
  endif()
endfunction()

if(BUILD_CONFIG)
  set(config_args --config ${BUILD_CONFIG})
endif()
run(${CMAKE_COMMAND} --install ${MSDA_BINARY_DIR} --prefix ${prefix} ${config_args})
# Same compiler as the library; a sanitized library needs a sanitized link.
set(extra)
if(CONSUMER_C_COMPILER)
  list(APPEND extra -DCMAKE_C_COMPILER=${CONSUMER_C_COMPILER})
endif()
if(CONSUMER_SANITIZE)
  list(APPEND extra "-DCMAKE_C_FLAGS=-fsanitize=${CONSUMER_SANITIZE}"
       "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${CONSUMER_SANITIZE} -fsanitize-link-c++-runtime -lstdc++")
endif()
if(CONSUMER_WITH_ACLNN)
  list(APPEND extra -DCONSUMER_WITH_ACLNN=ON)
endif()
# A cross build (cmake/aarch64-linux-gnu.cmake) cross-builds the consumer with the same
# toolchain and runs it under the emulator. The toolchain's find root would re-root the scratch
# prefix, so the package is named by its directory.
if(CONSUMER_TOOLCHAIN_FILE)
  file(GLOB_RECURSE config_file ${prefix}/msdaConfig.cmake)
  get_filename_component(config_dir "${config_file}" DIRECTORY)
  list(APPEND extra -DCMAKE_TOOLCHAIN_FILE=${CONSUMER_TOOLCHAIN_FILE} -Dmsda_DIR=${config_dir})
endif()
run(${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release ${extra})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build ${config_args})
find_program(consumer consumer PATHS ${WORK_DIR}/build ${WORK_DIR}/build/${BUILD_CONFIG}
             NO_DEFAULT_PATH REQUIRED)
run(${EMULATOR} ${consumer})
if(CONSUMER_WITH_ACLNN)
  find_program(aclnn_consumer aclnn_consumer
               PATHS ${WORK_DIR}/build ${WORK_DIR}/build/${BUILD_CONFIG} NO_DEFAULT_PATH REQUIRED)
  run(${EMULATOR} ${aclnn_consumer})
endif()
