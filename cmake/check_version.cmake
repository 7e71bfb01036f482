# ctest packaging.version: the version is written once, in include/msda/msda.h; CMake's
# project version (-DPROJECT_VERSION), the Python metadata (pyproject.toml reads the header)
# and msda.__version__ must agree with it.
file(READ "${SOURCE_DIR}/include/msda/msda.h" header)
foreach(part IN ITEMS MAJOR MINOR PATCH)
  if(NOT header MATCHES "#define MSDA_VERSION_${part} +([0-9]+)")
    message(FATAL_ERROR "msda.h has no MSDA_VERSION_${part}")
  endif()
  set(${part} ${CMAKE_MATCH_1})
endforeach()
set(version "${MAJOR}.${MINOR}.${PATCH}")
message(STATUS "msda.h: ${version}")
if(NOT PROJECT_VERSION STREQUAL version)
  message(FATAL_ERROR "CMake's project version ${PROJECT_VERSION} is not msda.h's ${version}")
endif()

file(READ "${SOURCE_DIR}/pyproject.toml" pyproject)
if(pyproject MATCHES "\nversion *= *\"([^\"]*)\"")
  message(FATAL_ERROR "pyproject.toml states version ${CMAKE_MATCH_1}; it must read msda.h "
                      "(dynamic = [\"version\"] and the regex provider)")
endif()
if(NOT pyproject MATCHES "dynamic *= *\\[[^]]*\"version\"" OR
   NOT pyproject MATCHES "input *= *\"include/msda/msda.h\"")
  message(FATAL_ERROR "pyproject.toml does not take its version from include/msda/msda.h")
endif()

file(READ "${SOURCE_DIR}/python/msda/__init__.py" init)
if(init MATCHES "__version__ *= *\"([^\"]*)\"" AND NOT CMAKE_MATCH_1 STREQUAL version)
  message(FATAL_ERROR "msda.__version__ is ${CMAKE_MATCH_1}, msda.h says ${version}")
endif()
message(STATUS "CMake, pyproject.toml and msda.__version__ agree: ${version}")
