#!/usr/bin/env bash
# Build the Docker sandbox image offline (no registry needed), reusing what is already built.
#
#   bash scripts/build-image.sh [--base-only] [--lean] [--force] [--rebuild-base]
#
# Three layers:
#   1. nexus-base:bookworm ($NEXUS_DOCKER_BASE): a minimal Debian bookworm made with
#      `debootstrap --variant=minbase` (python3, nodejs, bash, procps, ca-certificates),
#      a non-root user `user` (uid 1000, home /home/user), shrunk, then `docker import`ed.
#      The shrunk rootfs tarball is cached in $NEXUS_IMAGE_CACHE (default /var/cache/nexus),
#      so the base is re-imported from it rather than debootstrapped again.
#   2. nexus-datascience:bookworm ($NEXUS_DOCKER_DATASCIENCE): FROM the base, the default
#      environment's packages (DATASCIENCE_PACKAGES in nexus_kernel/providers/base.py:
#      IPython, numpy, pandas, matplotlib, seaborn, scipy, scikit-learn) in
#      /usr/local/lib/python3.X/dist-packages, where the image's python3 finds them. Wheels
#      only, fetched by this host's pip for the image's python version and platform (a
#      package registry is the only network used; pip's cache serves rebuilds); labelled
#      with its recipe, rebuilt only when that changes. --lean skips it.
#   3. nexus-sandbox:latest ($NEXUS_DOCKER_IMAGE): FROM layer 2 (or 1), the environment
#      (HOME, LANG, user 1000, working dir /home/user). No agent: the docker provider mounts
#      it from a volume into every image (nexus_kernel/providers/docker_agent.py), so a
#      change of the agent needs no rebuild.
# Reuse: each layer is rebuilt only when its recipe (labelled on it) changes.
#
# Options: --base-only (stop after layer 1), --lean (no layer 2: the lean image, e.g. with
# NEXUS_DOCKER_IMAGE=nexus-sandbox:lean), --force (rebuild layer 3 even when current),
# --rebuild-base (debootstrap again, ignoring the cached rootfs and base image).
# Env: NEXUS_DOCKER_IMAGE, NEXUS_DOCKER_BASE, NEXUS_DOCKER_DATASCIENCE, NEXUS_IMAGE_CACHE,
#      NEXUS_DEBIAN_MIRROR, NEXUS_HOST_PYTHON (the python whose pip fetches the wheels;
#      default python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

IMAGE="${NEXUS_DOCKER_IMAGE:-nexus-sandbox:latest}"
BASE="${NEXUS_DOCKER_BASE:-nexus-base:bookworm}"
CACHE="${NEXUS_IMAGE_CACHE:-/var/cache/nexus}"
MIRROR="${NEXUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DATASCIENCE="${NEXUS_DOCKER_DATASCIENCE:-nexus-datascience:bookworm}"
HOST_PYTHON="${NEXUS_HOST_PYTHON:-python3}"
SUITE=bookworm
PACKAGES="python3,nodejs,bash,procps,ca-certificates"
# Bump when the recipe below changes, so a stale cached rootfs is not reused.
RECIPE_VERSION=1

BASE_ONLY=0 FORCE=0 REBUILD_BASE=0 LEAN=0
for arg in "$@"; do
    case "$arg" in
        --base-only) BASE_ONLY=1 ;;
        --lean) LEAN=1 ;;
        --force) FORCE=1 ;;
        --rebuild-base) REBUILD_BASE=1 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "build-image: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

START=$SECONDS
step() { echo "build-image [$((SECONDS - START))s]: $*"; }
die() { echo "build-image: error: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "the docker CLI is missing: apt-get install -y docker.io"
docker info >/dev/null 2>&1 || die "the Docker engine is not running: bash scripts/start-dockerd.sh"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

RECIPE_HASH="$(printf '%s|%s|%s|%s' "$SUITE" "$PACKAGES" "$RECIPE_VERSION" "$(uname -m)" | sha256sum | cut -c1-12)"
TARBALL="$CACHE/rootfs-$SUITE-$RECIPE_HASH.tar"

# ---- layer 1: the base ---------------------------------------------------------------

shrink_rootfs() {
    local rootfs="$1"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/lintian "$rootfs"/usr/share/linda "$rootfs"/usr/share/bug
    find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' \
        -exec rm -rf {} + 2>/dev/null || true
    find "$rootfs" -xdev -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true
    # keep docs/man pages out of future apt installs in derived images too
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/nexus-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF
}

add_user() {
    local rootfs="$1"
    if ! chroot "$rootfs" id -u user >/dev/null 2>&1; then
        chroot "$rootfs" useradd --uid 1000 --user-group --create-home --home-dir /home/user \
            --shell /bin/bash user
    fi
    mkdir -p "$rootfs/opt/nexus-agent" "$rootfs/run/nexus"
    chroot "$rootfs" chown 1000:1000 /run/nexus
    chmod 0700 "$rootfs/run/nexus"
}

debootstrap_rootfs() {
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing: apt-get install -y debootstrap"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root: run this script with sudo"
    local work rootfs
    work="$(mktemp -d /var/tmp/nexus-rootfs.XXXXXX)"
    rootfs="$work/rootfs"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    step "debootstrap --variant=minbase $SUITE with $PACKAGES from $MIRROR (a few minutes)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
        | while IFS= read -r line; do
            case "$line" in I:\ Retrieving*|I:\ Validating*|I:\ Extracting*|I:\ Unpacking*|I:\ Configuring*) ;;
                *) echo "    $line" ;; esac
          done
    [ -x "$rootfs/usr/bin/python3" ] || die "debootstrap finished without python3 in the rootfs"
    step "adding user 'user' (uid 1000, home /home/user)"
    add_user "$rootfs"
    step "shrinking the rootfs (apt caches, docs, man pages, locales)"
    shrink_rootfs "$rootfs"
    step "the rootfs is $(du -sh "$rootfs" | cut -f1); caching it as $TARBALL"
    mkdir -p "$CACHE"
    tar --numeric-owner --xattrs -C "$rootfs" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
    rm -rf "$work"
    trap - EXIT
}

import_base() {
    step "docker import $TARBALL as $BASE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL nexus.base_recipe=$RECIPE_HASH" \
        --change 'CMD ["/bin/bash"]' \
        "$TARBALL" "$BASE" >/dev/null
}

build_base() {
    if [ "$REBUILD_BASE" = 0 ] && image_exists "$BASE" \
        && [ "$(image_label "$BASE" nexus.base_recipe)" = "$RECIPE_HASH" ]; then
        step "$BASE is up to date (recipe $RECIPE_HASH)"
        return
    fi
    if [ "$REBUILD_BASE" = 1 ] || [ ! -s "$TARBALL" ]; then
        debootstrap_rootfs
    else
        step "reusing the cached rootfs $TARBALL"
    fi
    import_base
    step "$BASE: $(docker image inspect --format '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}')"
}

# ---- layer 2: the default environment --------------------------------------------------

datascience_packages() {
    sed -n '/^DATASCIENCE_PACKAGES = (/,/)/p' "$ROOT/nexus_kernel/providers/base.py" \
        | sed 's/^DATASCIENCE_PACKAGES = //' | tr -d '()"' | tr ',' ' ' | xargs
}

build_datascience() {
    local packages version arch recipe ctx platforms=()
    packages="$(datascience_packages)"
    [ -n "$packages" ] || die "cannot read DATASCIENCE_PACKAGES from nexus_kernel/providers/base.py"
    version="$(docker run --rm --network none "$BASE" python3 -c \
        'import sys; print("%d.%d" % sys.version_info[:2])')" || die "cannot run python3 in $BASE"
    recipe="$(printf '%s|%s|%s|%s' "$RECIPE_HASH" "$packages" "$version" "$(uname -m)" | sha256sum | cut -c1-12)"
    if image_exists "$DATASCIENCE" \
        && [ "$(image_label "$DATASCIENCE" nexus.datascience_recipe)" = "$recipe" ]; then
        step "$DATASCIENCE is up to date (recipe $recipe)"
        return
    fi
    "$HOST_PYTHON" -m pip --version >/dev/null 2>&1 || die "$HOST_PYTHON has no pip to fetch" \
        "the data-science wheels: apt-get install python3-pip, set NEXUS_HOST_PYTHON, or use --lean"
    arch="$(uname -m)"
    # the image's glibc (bookworm: 2.36) runs these manylinux wheels
    for tag in manylinux_2_36 manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014; do
        platforms+=(--platform "${tag}_$arch")
    done
    ctx="$(mktemp -d /var/tmp/nexus-datascience.XXXXXX)"
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx'" EXIT
    step "pip: $packages for python $version ($arch wheels only; ~30 s, ~470 MB)"
    # shellcheck disable=SC2086
    # (pip's "dependency resolver does not ... take into account" note is about this host's
    # own packages, which --target does not use: only the install's end is shown)
    "$HOST_PYTHON" -m pip install --no-input --disable-pip-version-check --progress-bar off \
        --target "$ctx/site" --python-version "$version" --implementation cp \
        --only-binary=:all: "${platforms[@]}" $packages >"$ctx/pip.log" 2>&1 \
        || { tail -5 "$ctx/pip.log" >&2; die "pip could not fetch the data-science wheels (above)"; }
    grep -E '^Successfully installed' "$ctx/pip.log" | sed 's/^/    /' || true
    [ -d "$ctx/site/pandas" ] || die "pip did not install the data-science packages"
    rm -rf "$ctx/site/bin"   # console scripts with this host's python in their shebang
    find "$ctx/site" -name '__pycache__' -type d -prune -exec rm -rf {} +
    chmod -R a+rX,go-w "$ctx/site"
    {
        echo "FROM $BASE"
        echo "COPY site /usr/local/lib/python$version/dist-packages"
        echo "RUN python3 -m compileall -q -j 0 /usr/local/lib/python$version/dist-packages >/dev/null 2>&1 || true"
    } >"$ctx/Dockerfile"
    step "docker build $DATASCIENCE"
    local builder_env=()
    docker buildx version >/dev/null 2>&1 || builder_env=(env DOCKER_BUILDKIT=0)
    if ! "${builder_env[@]}" docker build --quiet --label "nexus.datascience_recipe=$recipe" \
        -t "$DATASCIENCE" "$ctx" >"$ctx/build.log" 2>&1; then
        cat "$ctx/build.log" >&2
        die "docker build of $DATASCIENCE failed"
    fi
    rm -rf "$ctx"
    trap - EXIT
    step "$DATASCIENCE: $(docker image inspect --format '{{.Size}}' "$DATASCIENCE" | awk '{printf "%.0f MB", $1/1e6}')"
}

# ---- layer 3: the environment ---------------------------------------------------------

sandbox_dockerfile() {
    cat <<EOF
FROM $FROM
ENV HOME=/home/user LANG=C.UTF-8 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/user
USER 1000:1000
CMD ["bash"]
EOF
}

build_sandbox() {
    local recipe ctx
    # the top layer's recipe: the layer below (its image id) and this Dockerfile
    recipe="$RECIPE_HASH-$( (docker image inspect --format '{{.Id}}' "$FROM"; sandbox_dockerfile) \
        | sha256sum | cut -c1-12)"
    if [ "$FORCE" = 0 ] && image_exists "$IMAGE" \
        && [ "$(image_label "$IMAGE" nexus.image_recipe)" = "$recipe" ]; then
        step "$IMAGE is up to date (recipe $recipe)"
        return
    fi
    ctx="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx'" EXIT
    sandbox_dockerfile >"$ctx/Dockerfile"
    step "docker build $IMAGE"
    # Without the buildx plugin, the legacy builder is the one that works (FROM a local image).
    local builder_env=()
    docker buildx version >/dev/null 2>&1 || builder_env=(env DOCKER_BUILDKIT=0)
    if ! "${builder_env[@]}" docker build --quiet \
        --label "nexus.image_recipe=$recipe" -t "$IMAGE" "$ctx" >"$ctx/build.log" 2>&1; then
        cat "$ctx/build.log" >&2
        die "docker build of $IMAGE failed"
    fi
    rm -rf "$ctx"
    trap - EXIT
    image_exists "$IMAGE" || die "docker build did not produce $IMAGE"
    step "$IMAGE is ready"
}

build_base
[ "$BASE_ONLY" = 1 ] && { step "done (base only)"; exit 0; }
FROM="$BASE"
if [ "$LEAN" = 0 ]; then
    build_datascience
    FROM="$DATASCIENCE"
fi
build_sandbox
step "done"
