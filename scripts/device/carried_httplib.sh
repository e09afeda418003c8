#!/usr/bin/env bash
# Sourced on the GPU machine, whose image has no cpp-httplib: points pkg-config at the files of
# Debian's libcpp-httplib0.11 / libcpp-httplib-dev (and the OpenSSL, zlib and Brotli headers its
# header includes) extracted into a carried, git-ignored folder (default local/debs: `dpkg-deb -x`
# of each .deb; fetched with `apt-get download` on a Debian machine). The shared libraries of
# OpenSSL, zlib and Brotli are the image's own.
# Usage: source scripts/device/carried_httplib.sh [DIR]
_d=$(cd "${1:-local/debs}" 2>/dev/null && pwd) || { echo "carried_httplib: ${1:-local/debs} is missing"; return 1; }
_lib=$_d/usr/lib/x86_64-linux-gnu
_sys=/usr/lib/x86_64-linux-gnu
# the link names the linker wants (the -dev packages' symlinks do not travel)
ln -sf libcpp-httplib.so.0.11.4 "$_lib/libcpp-httplib.so.0.11"
ln -sf libcpp-httplib.so.0.11 "$_lib/libcpp-httplib.so"
for l in ssl.so.3 crypto.so.3 z.so.1 brotlidec.so.1 brotlienc.so.1 brotlicommon.so.1; do
  [[ -e $_sys/lib$l ]] && ln -sf "$_sys/lib$l" "$_lib/lib${l%.*}"
done
mkdir -p "$_d/pkgconfig"
cat >"$_d/pkgconfig/cpp-httplib.pc" <<PC
prefix=$_d/usr
includedir=\${prefix}/include
libdir=$_lib
Name: cpp-httplib
Description: cpp-httplib 0.11.4 (Debian's build, carried)
Version: 0.11.4
Libs: -L\${libdir} -lcpp-httplib -lssl -lcrypto -lz -lbrotlidec -lbrotlienc -pthread
Cflags: -I\${includedir} -I\${includedir}/x86_64-linux-gnu -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT
PC
export PKG_CONFIG_PATH="$_d/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _d _lib _sys
