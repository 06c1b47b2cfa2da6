#!/bin/sh
# mmdebstrap --extract-hook for weft's image base (xtask/src/image.rs): runs
# after the packages are unpacked into "$1" and before the tarball is written.
# The packages were extracted, not installed (no maintainer scripts, no shell
# needed in the image), so this does the little installation would have done
# that the image needs, and removes what only the build used.
set -eu
root="$1"

# What is installed, for scanners (syft, trivy, grype read status.d/ as they
# do in distroless images): one control stanza per package, from the .debs
# themselves. The database apt and dpkg would keep is not needed: the image
# is never changed in place.
mkdir -p "$root/var/lib/dpkg/status.d"
for deb in "$root"/var/cache/apt/archives/*.deb; do
    package=$(dpkg-deb --field "$deb" Package)
    {
        dpkg-deb --field "$deb" Package Version Architecture Source Maintainer Depends
        echo "Status: install ok installed"
    } > "$root/var/lib/dpkg/status.d/$package"
done

# Accounts by number, as Kubernetes runs the containers (the agent and the
# CNI copy step run as root; see the DaemonSet's securityContext).
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

# The build's own: apt's and dpkg's state and configuration, mmdebstrap's
# files, and files the container runtime provides at run time.
rm -rf "$root/etc/apt" "$root/etc/dpkg" "$root/var/cache/apt" "$root/var/lib/apt" \
    "$root/var/log/apt" "$root/var/cache/debconf" \
    "$root/etc/hostname" "$root/etc/resolv.conf" "$root/etc/fstab"
# debconf comes in as iproute2's dependency: perl scripts, and no perl.
rm -rf "$root/usr/share/perl5" "$root/usr/share/debconf" "$root/etc/debconf.conf" \
    "$root"/usr/bin/debconf* "$root"/usr/sbin/dpkg-*configure \
    "$root/usr/share/doc/debconf" "$root/var/lib/dpkg/status.d/debconf"
find "$root/var/lib/dpkg" -mindepth 1 -maxdepth 1 ! -name status.d -exec rm -rf {} +
# Directories the excluded paths and the removals left empty.
for dir in usr/share usr/include etc var; do
    if [ -d "$root/$dir" ]; then
        find "$root/$dir" -depth -type d -empty -delete
    fi
done
