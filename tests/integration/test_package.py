#!/usr/bin/python3
"""
The install layout and the Debian package (cmake/package.cmake, packaging/).

A release build of its own, from this source tree, configured the way the
package is made (prefix /usr, no tests), then `cpack -G DEB`. Checked with
dpkg-deb: exactly the four files in the right places, Depends found by
dpkg-shlibdeps for exactly the libraries the binaries are linked to,
Recommends mosquitto, the config a conffile with store.dir =
/var/lib/race2mqtt and nothing else changed from the example, maintainer
scripts executable and valid sh, and the packaged binaries run and accept the
packaged config. `cmake --install` into a DESTDIR twice keeps an edited
config. The unit passes `systemd-analyze verify` without a word and its
`systemd-analyze security` exposure stays low. An example config whose
[store] no longer says "# dir = ./var" fails packaging/config.cmake.

It builds everything from scratch with -j2, nothing reused: about 20 s on
two cores, most of it compiling.
"""
import difflib
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import harness

SRC = harness.REPO
VERSION_RE = r"project\(\s*race2mqtt\s+VERSION\s+([0-9][0-9.]*)"
CONF = "/etc/race2mqtt/race2mqtt.conf"
UNIT = "/usr/lib/systemd/system/race2mqtt.service"
FILES = {"/usr/bin/race2mqtt", "/usr/bin/race2mqtt-replay", CONF, UNIT}
# Libraries of the binaries; libsystemd0 joins them when the gateway links
# libsystemd (sd_notify).
DEPENDS = {"libc6", "libcurl4", "libjson-c5", "libmicrohttpd12", "libinih1", "libpaho-mqtt1.3",
           "zlib1g"}
# At most this exposure from `systemd-analyze security` (0 = locked down,
# 10 = none); the unit scored 1.1 when this was written. The network access
# the gateway needs (AF_INET, AF_INET6, no IP allow list) is most of it.
MAX_EXPOSURE = 1.5
STATE_DIR_LINE = "dir = /var/lib/race2mqtt"


def project_version():
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        return re.search(VERSION_RE, f.read()).group(1)


def run(argv, cwd=None, env=None, timeout=600):
    """(exit status, stdout, stderr) as text."""
    p = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RACE2MQTT_") and k != "DESTDIR"}
    env.update(extra)
    return env


def files_under(root):
    """Absolute paths (as installed) of every non-directory below root."""
    out = set()
    for d, _, names in os.walk(root):
        for n in names:
            out.add("/" + os.path.relpath(os.path.join(d, n), root))
    return out


def needed(binary):
    """The DT_NEEDED sonames of an ELF file."""
    rc, out, err = run(["readelf", "-d", binary])
    assert rc == 0, err
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))


def library_packages(binary):
    """{soname: Debian package} of every library binary's DT_NEEDED names,
    as the dynamic linker resolves them here."""
    rc, out, err = run(["ldd", binary])
    assert rc == 0, err
    paths = dict(re.findall(r"^\s*(\S+) => (/\S+)", out, re.M))
    owners = {}
    for soname in needed(binary):
        path = paths.get(soname)
        assert path, "%s: ldd does not resolve %s" % (binary, soname)
        # Merged /usr: the linker may say /lib/... where dpkg knows /usr/lib/...
        # (or the other way round).
        alias = path[4:] if path.startswith("/usr/") else "/usr" + path
        for p in (path, alias, os.path.realpath(path)):
            rc, out, _ = run(["dpkg-query", "-S", p])
            if rc == 0:
                owners[soname] = out.split(":")[0].split(",")[0].strip()
                break
        assert soname in owners, "no package ships %s (%s)" % (soname, path)
    return owners


def parse_depends(text):
    """{package: version constraint or None} of a Depends field without
    alternatives."""
    out = {}
    for item in text.split(","):
        item = item.strip()
        assert "|" not in item, "alternatives in Depends: %r" % item
        m = re.match(r"^([a-z0-9][a-z0-9.+-]*)(?:\s*\(([^)]*)\))?$", item)
        assert m, "Depends entry %r" % item
        out[m.group(1)] = m.group(2)
    return out


class PackageTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="r2m-it-pkg-")
        cls.build = os.path.join(cls.tmp, "build")
        t0 = time.monotonic()
        try:
            cls.step(["cmake", "-S", SRC, "-B", cls.build, "-DRACE2MQTT_TESTS=OFF",
                      "-DCMAKE_INSTALL_PREFIX=/usr", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"])
            cls.step(["cmake", "--build", cls.build, "-j2"])
            cls.step(["cpack", "-G", "DEB"], cwd=cls.build)
            debs = [n for n in os.listdir(cls.build) if n.endswith(".deb")]
            assert len(debs) == 1, "cpack made %r" % debs
            cls.deb = os.path.join(cls.build, debs[0])
            cls.root = os.path.join(cls.tmp, "deb-root")
            cls.control = os.path.join(cls.tmp, "deb-control")
            cls.step(["dpkg-deb", "-x", cls.deb, cls.root])
            cls.step(["dpkg-deb", "-e", cls.deb, cls.control])
        except BaseException:
            cls.tearDownClass()
            raise
        print("package: %s, %d bytes, built in %.0f s"
              % (debs[0], os.path.getsize(cls.deb), time.monotonic() - t0))

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("R2M_KEEP_TMP") == "1":
            print("kept %s" % cls.tmp)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def step(cls, argv, cwd=None, env=None):
        rc, out, err = run(argv, cwd=cwd, env=env or clean_env())
        if rc != 0:
            raise AssertionError("%s: exit status %d\n%s\n%s"
                                 % (" ".join(argv), rc, out[-4000:], err[-4000:]))
        return out

    def field(self, name):
        rc, out, err = run(["dpkg-deb", "-f", self.deb, name])
        self.assertEqual(rc, 0, err)
        return out.strip()

    # ---- the package ---------------------------------------------------------

    def test_file_list(self):
        rc, out, err = run(["dpkg-deb", "-c", self.deb])
        self.assertEqual(rc, 0, err)
        entries = [line.split()[-1] for line in out.splitlines()]
        files = {e[1:] for e in entries if not e.endswith("/")}
        self.assertEqual(files, FILES, "files in the package")
        # Directories: only the parents of those files (nothing under
        # /usr/local, /var or the build dir).
        parents = set()
        for f in FILES:
            d = os.path.dirname(f)
            while d != "/":
                parents.add("." + d + "/")
                d = os.path.dirname(d)
        self.assertEqual({e for e in entries if e.endswith("/")}, parents)
        for line in out.splitlines():
            self.assertIn(" root/root ", line, "not owned by root: %s" % line)
        modes = {line.split()[-1][1:]: line.split()[0] for line in out.splitlines()}
        self.assertEqual(modes["/usr/bin/race2mqtt"], "-rwxr-xr-x")
        self.assertEqual(modes[CONF], "-rw-r--r--")
        self.assertEqual(modes[UNIT], "-rw-r--r--")

    def test_control_fields(self):
        self.assertEqual(self.field("Package"), "race2mqtt")
        self.assertEqual(self.field("Version"), project_version())
        self.assertEqual(self.field("Section"), "net")
        self.assertEqual(self.field("Recommends"), "mosquitto")
        self.assertEqual(self.field("Maintainer"), "race2mqtt developers <race2mqtt@localhost>")
        arch = run(["dpkg", "--print-architecture"])[1].strip()
        self.assertEqual(self.field("Architecture"), arch)
        self.assertEqual(os.path.basename(self.deb),
                         "race2mqtt_%s_%s.deb" % (project_version(), arch))

    def test_depends_from_shlibdeps(self):
        depends = self.field("Depends")
        print("Depends: %s" % depends)
        deps = parse_depends(depends)
        libs = {}
        for b in ("race2mqtt", "race2mqtt-replay"):
            libs.update(library_packages(os.path.join(self.root, "usr", "bin", b)))
        # Exactly the packages of the libraries linked, no more (a hand-kept
        # list would drift) and no less.
        self.assertEqual(set(deps), set(libs.values()), "Depends vs the owners of %r" % libs)
        with_systemd = "libsystemd.so.0" in needed(os.path.join(self.root, "usr", "bin",
                                                                "race2mqtt"))
        self.assertEqual("libsystemd0" in deps, with_systemd,
                         "libsystemd0 in Depends iff race2mqtt links libsystemd.so.0")
        self.assertTrue(DEPENDS <= set(deps), "missing: %s" % sorted(DEPENDS - set(deps)))
        for name, constraint in deps.items():
            # libsystemd0's symbols file dates sd_notify* back to its first
            # version ("0"), so dpkg-shlibdeps rightly asks for no version.
            if name == "libsystemd0" and constraint is None:
                continue
            self.assertIsNotNone(constraint, "%s without a version: not from shlibdeps?" % name)
            self.assertRegex(constraint, r"^>= [0-9][0-9A-Za-z.:~+-]*$", name)

    def test_stripped(self):
        for b in ("race2mqtt", "race2mqtt-replay"):
            rc, out, err = run(["readelf", "-S", os.path.join(self.root, "usr", "bin", b)])
            self.assertEqual(rc, 0, err)
            self.assertNotIn(".symtab", out, "%s not stripped" % b)
            self.assertNotIn(".debug_info", out, "%s has debug info" % b)

    def test_conffiles_and_maintainer_scripts(self):
        with open(os.path.join(self.control, "conffiles")) as f:
            self.assertEqual(f.read().split(), [CONF])
        for name in ("postinst", "prerm", "postrm"):
            path = os.path.join(self.control, name)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o755, name)
            with open(path) as f:
                text = f.read()
            self.assertTrue(text.startswith("#!/bin/sh\n"), name)
            self.assertRegex(text, r"(?m)^set -e$", name)
            # dash: Debian's /bin/sh, stricter than bash about POSIX sh.
            rc, _, err = run(["dash", "-n", path])
            self.assertEqual(rc, 0, "%s: %s" % (name, err))
            # Without systemd running (chroot, container) nothing may fail.
            self.assertRegex(text, r"\[ -d /run/systemd/system \]", name)
        with open(os.path.join(self.control, "postrm")) as f:
            postrm = f.read()
        self.assertIn("/var/lib/private/race2mqtt", postrm)
        self.assertIn("/var/lib/race2mqtt", postrm)

    def test_packaged_config(self):
        with open(os.path.join(self.root, CONF[1:])) as f:
            packaged = f.read().splitlines()
        with open(os.path.join(SRC, "config", "race2mqtt.conf")) as f:
            example = f.read().splitlines()
        section = None
        dirs = []
        for line in packaged:
            m = re.match(r"^\[([a-z]+)\]$", line)
            if m:
                section = m.group(1)
            elif re.match(r"^\s*dir\s*=", line):
                dirs.append((section, line))
        self.assertEqual(dirs, [("store", STATE_DIR_LINE)])
        diff = [d for d in difflib.ndiff(example, packaged) if d[:1] in "+-"]
        removed = [d[2:] for d in diff if d.startswith("-")]
        added = [d[2:] for d in diff if d.startswith("+")]
        self.assertEqual(removed, ["# dir = ./var"], "the example changed elsewhere too")
        self.assertEqual([a for a in added if not a.startswith("#")], [STATE_DIR_LINE])

    def test_packaged_binaries_run(self):
        gw = os.path.join(self.root, "usr", "bin", "race2mqtt")
        rc, out, err = run(["ldd", gw])
        self.assertEqual(rc, 0, err)
        self.assertNotIn("not found", out)
        rc, out, err = run([gw, "--version"], env=clean_env())
        self.assertEqual(rc, 0, err)
        self.assertIn(project_version(), out + err)
        rc, out, err = run([gw, "--check-config", "-c", os.path.join(self.root, CONF[1:])],
                           env=clean_env(), cwd=self.tmp)
        self.assertEqual(rc, 0, out + err)
        self.assertRegex(out, r"(?m)^dir = /var/lib/race2mqtt$")
        replay = os.path.join(self.root, "usr", "bin", "race2mqtt-replay")
        rc, out, err = run([replay, "--help"], env=clean_env())
        self.assertEqual(rc, 0, out + err)

    # ---- cmake --install -------------------------------------------------------

    def test_install_keeps_an_edited_config(self):
        dest = os.path.join(self.tmp, "destdir-keep")
        env = clean_env(DESTDIR=dest)
        self.step(["cmake", "--install", self.build], env=env)
        self.assertEqual(files_under(dest), FILES, "cmake --install and the package differ")
        conf = os.path.join(dest, CONF[1:])
        with open(conf, "a") as f:
            f.write("\n[log]\nlevel = debug\n")
        with open(conf) as f:
            edited = f.read()
        out = self.step(["cmake", "--install", self.build], env=env)
        with open(conf) as f:
            self.assertEqual(f.read(), edited, "cmake --install replaced an edited config")
        self.assertRegex(out, r"Kept: %s" % re.escape(conf))
        self.assertEqual(files_under(dest), FILES)

    # ---- the systemd unit ----------------------------------------------------

    def unit_copy(self):
        """The installed unit with ExecStart pointing at the installed binary.
        `systemd-analyze verify` checks that the binary exists; --root=
        would also make it look for sysinit.target and the other default
        dependencies in that tree (systemd 252 fails with "Unit
        sysinit.target not found"), so the copy is verified against this
        machine's units instead. Its name must stay race2mqtt.service."""
        dest = os.path.join(self.tmp, "destdir-unit")
        if not os.path.isdir(dest):
            self.step(["cmake", "--install", self.build], env=clean_env(DESTDIR=dest))
        with open(os.path.join(dest, UNIT[1:])) as f:
            unit = f.read()
        self.assertRegex(unit, r"(?m)^ExecStart=/usr/bin/race2mqtt -c %s$" % re.escape(CONF))
        self.assertNotRegex(unit, r"@[a-z_]+@", "unsubstituted @var@")
        d = os.path.join(self.tmp, "unit")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "race2mqtt.service")
        with open(path, "w") as f:
            f.write(unit.replace("ExecStart=/usr/bin/race2mqtt ",
                                 "ExecStart=%s/usr/bin/race2mqtt " % dest))
        return path

    def test_unit_verify(self):
        path = self.unit_copy()
        rc, out, err = run(["systemd-analyze", "verify", "--man=no", path])
        # verify loads the units ours refers to from this machine; what it
        # says about one of those (a line naming another unit file) is not
        # ours to fix. Everything else counts, and verify exits 0 even for
        # an unknown key or a bad value, so the words are what is checked.
        other = re.compile(r"^(/etc|/run|/usr/lib|/lib)/systemd/system/(?!race2mqtt\.service)"
                           r"[^:/]+:")
        ours = [line for line in (out + err).splitlines() if line and not other.match(line)]
        ignored = [line for line in err.splitlines() if other.match(line)]
        if ignored:
            print("systemd-analyze verify, about other units (ignored):\n  "
                  + "\n  ".join(ignored))
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(ours, [], "systemd-analyze verify")

    def test_unit_security(self):
        path = self.unit_copy()
        rc, out, err = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", path])
        print(out)
        self.assertEqual(rc, 0, err)
        m = re.search(r"Overall exposure level for race2mqtt\.service: ([0-9.]+) (\S+)", out)
        self.assertIsNotNone(m, out + err)
        score = float(m.group(1))
        print("systemd-analyze security: exposure %.1f %s (at most %.1f)"
              % (score, m.group(2), MAX_EXPOSURE))
        self.assertLessEqual(score, MAX_EXPOSURE)
        # Exposure the gateway does not need would show up here first.
        for setting in ("DynamicUser=", "ProtectSystem=", "CapabilityBoundingSet=~CAP_SYS_ADMIN",
                        "SystemCallFilter=~@privileged", "PrivateDevices=", "PrivateUsers="):
            line = [ln for ln in out.splitlines() if (" %s " % setting) in ln or
                    ("/%s " % setting) in ln]
            self.assertTrue(line and line[0].lstrip().startswith("\u2713"),
                            "%s not satisfied: %r" % (setting, line))

    # ---- the config transformation ---------------------------------------------

    def test_config_without_the_dir_line_fails(self):
        with open(os.path.join(SRC, "config", "race2mqtt.conf")) as f:
            example = f.read()
        self.assertEqual(example.count("\n# dir = ./var\n"), 1)
        cases = {
            "missing": example.replace("\n# dir = ./var\n", "\n"),
            "changed": example.replace("\n# dir = ./var\n", "\n# dir = ./state\n"),
            "in [log]": example.replace("\n# dir = ./var\n", "\n").replace(
                "\n[log]\n", "\n[log]\n# dir = ./var\n"),
        }
        d = os.path.join(self.tmp, "conf-cases")
        os.makedirs(d, exist_ok=True)
        for name, text in sorted(cases.items()):
            with self.subTest(case=name):
                src = os.path.join(d, "in.conf")
                out = os.path.join(d, "out.conf")
                with open(src, "w") as f:
                    f.write(text)
                if os.path.exists(out):
                    os.unlink(out)
                rc, so, se = run(["cmake", "-DR2M_CONF_IN=" + src, "-DR2M_CONF_OUT=" + out,
                                  "-DR2M_STATE_DIR=/var/lib/race2mqtt", "-P",
                                  os.path.join(SRC, "packaging", "config.cmake")])
                self.assertNotEqual(rc, 0, "accepted an example with the line %s" % name)
                self.assertIn("# dir = ./var", se)
                self.assertFalse(os.path.exists(out), "wrote a config anyway")


if __name__ == "__main__":
    harness.main()
