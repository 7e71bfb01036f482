#!/usr/bin/env bash
# The packages as a user gets them (part of scripts/test.sh; MSDA_SKIP_PACKAGING=1 skips it):
# builds the portable wheel (scripts/build_wheel.sh), checks with `auditwheel show` that it
# needs nothing outside its manylinux policy but the torch libraries msda/_torch_ops.so is
# loaded beside, installs it with torch into a fresh venv and runs forward and backward from
# outside the checkout, with the vendored Highway and the C++ autograd node loaded.
# Builds the sdist (`python -m build --sdist`) and checks it holds what a build needs;
# `--sdist-install` also installs that sdist into the venv (a full build, about 80 s).
# `pip install .` with Highway hidden must stop with msda's message naming it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
start=$(date +%s)
mkdir -p build-wheel
bash scripts/build_wheel.sh > build-wheel/build.log 2>&1 || { cat build-wheel/build.log; exit 1; }
tail -1 build-wheel/build.log
wheel=$(ls "$repo"/wheelhouse/msda_ops-*.whl)
tools=$repo/build-wheel/tools

# Nothing outside the policy but the torch libraries msda/_torch_ops.so is loaded beside:
# auditwheel names every library that keeps the wheel from its tag's policy.
case "$wheel" in *manylinux_*) ;; *) echo "test_packaging: wheel not tagged manylinux" >&2; exit 1;; esac
"$tools/bin/auditwheel" show --json "$wheel" > build-wheel/show.json
python3 - "$wheel" build-wheel/show.json <<'PY'
import json, re, sys
wheel, show = sys.argv[1], json.load(open(sys.argv[2]))
tag = re.search(r"(manylinux_\d+_\d+_\w+)\.whl$", wheel).group(1)
extra = set(show["policy_upgrades"].get(tag, {}).get("libs_to_eliminate", ["(no such policy)"]))
torch_libs = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1"}
if not show["sym_tag"].startswith("manylinux_") or not extra <= torch_libs:
    sys.exit(f"test_packaging: the wheel is not {tag}: symbols {show['sym_tag']}, libraries "
             f"outside the policy {sorted(extra - torch_libs)}")
print(f"test_packaging: {tag}, outside the policy only torch's {sorted(extra)}")
PY

quiet_pip() {  # pip, without this machine's notes on its local indexes
  "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
venv=$(mktemp -d /tmp/msda-wheel-venv.XXXXXX)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
# torch is pinned to the CPU build kept on these machines (an unpinned one is a CUDA build).
quiet_pip "$venv/bin/pip" install -q "torch==2.13.0" "$wheel"
(cd "$venv" && REPO="$repo" "$venv/bin/python" - <<'PY'
import os, torch, msda, importlib.metadata as md
assert not msda.__file__.startswith(os.environ.get("REPO", "/nonexistent")), msda.__file__
torch.manual_seed(0)
shapes = torch.tensor([[8, 8], [4, 4]])
value = torch.randn(2, 80, 4, 16, requires_grad=True)
loc = torch.rand(2, 10, 4, 2, 3, 2, requires_grad=True)
attn = torch.rand(2, 10, 4, 2, 3).softmax(-1).requires_grad_()
out = msda.ms_deform_attn(value, shapes, None, loc, attn)
out.square().sum().backward()
assert out.shape == (2, 10, 64) and all(t.grad is not None for t in (value, loc, attn))
with open("/proc/self/maps") as f:
    hwy = {line.split()[-1] for line in f if "libhwy" in line}
assert hwy and all("msda_ops.libs" in p for p in hwy), hwy
# The autograd node in C++, built against this torch, with torch's own OpenMP runtime.
import msda.ops
assert msda.ops._eager_op is not None, "msda/_torch_ops.so did not load"
with open("/proc/self/maps") as f:
    gomp = {line.split()[-1] for line in f if "libgomp" in line}
assert len(gomp) == 1 and all("/torch/lib/" in p for p in gomp), gomp
print("test_packaging: wheel", md.version("msda-ops"), "runs forward+backward from", os.getcwd(),
      "with", *hwy, "and its C++ autograd node")
PY
)

# pip stops at the configure with the message naming Highway and its packages.
if log=$("$tools/bin/python" -m pip wheel --no-build-isolation --no-deps . -w build-wheel/nohwy \
      -Cbuild-dir=build-wheel/nohwy -Ccmake.define.CMAKE_DISABLE_FIND_PACKAGE_hwy=ON 2>&1); then
  echo "test_packaging: pip built without Highway" >&2; exit 1
fi
for text in "msda needs Google Highway" "apt-get install libhwy-dev" "dnf install highway-devel"; do
  grep -qF "$text" <<< "$log" || { echo "$log"; echo "test_packaging: no \"$text\"" >&2; exit 1; }
done
echo "test_packaging: pip install without Highway stops with msda's message"

# The sdist: built by the standard frontend, holding the sources the build needs.
rm -rf build-wheel/sdist
quiet_pip "$tools/bin/pip" install -q build
"$tools/bin/python" -m build -q --sdist -o build-wheel/sdist . > /dev/null
sdist=$(ls "$repo"/build-wheel/sdist/msda_ops-*.tar.gz)
tar tzf "$sdist" > build-wheel/sdist/members.txt
for member in LICENSE pyproject.toml CMakeLists.txt cmake/MissingDependency.cmake \
              include/msda/msda.h src/api.cc python/CMakeLists.txt python/msda/__init__.py \
              python/src/torch_ops.cc; do
  grep -qx "msda_ops-[0-9.]*/$member" build-wheel/sdist/members.txt \
    || { echo "test_packaging: $member missing from $sdist" >&2; exit 1; }
done
echo "test_packaging: sdist $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB)"
if [ "${1:-}" = --sdist-install ]; then
  "$venv/bin/pip" uninstall -q -y msda-ops
  quiet_pip "$venv/bin/pip" install -q "$sdist"
  (cd "$venv" && "$venv/bin/python" -c "import msda, numpy as np; print('test_packaging: sdist installs,', msda.library_version())")
fi
echo "test_packaging: passed in $(($(date +%s) - start)) s"
