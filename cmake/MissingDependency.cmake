# msda_missing_dependency(WHAT DEBIAN FEDORA HOMEBREW CONDA HINT_VARIABLE [EXTRA])
# Stops the configure with one message that names the missing package and how to get it on
# the common systems, instead of find_package's generic "Could not find a package
# configuration file".
function(msda_missing_dependency what debian fedora homebrew conda hint_variable)
  set(extra "")
  if(ARGN)
    list(JOIN ARGN "\n" extra)
    set(extra "\n${extra}")
  endif()
  message(FATAL_ERROR
    "msda needs ${what}, which was not found.\n"
    "Install it with one of:\n"
    "  Debian/Ubuntu:  sudo apt-get install ${debian}\n"
    "  Fedora:         sudo dnf install ${fedora}\n"
    "  Homebrew:       brew install ${homebrew}\n"
    "  conda-forge:    conda install -c conda-forge ${conda}\n"
    "or point CMake at an existing install: -DCMAKE_PREFIX_PATH=<prefix> or "
    "-D${hint_variable}=<directory with its CMake config file> (with pip: "
    "pip install . -Ccmake.define.CMAKE_PREFIX_PATH=<prefix>)."
    "${extra}")
endfunction()
