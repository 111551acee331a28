#!/usr/bin/env python3
"""The kube-bench evaluator (kube_bench.py) on synthetic check files this test writes (never
kube-bench's own data), against files and a process it creates: substitution, audits, every test
operator, bin_op, states. Run by tests/kube_bench.rs on every scripts/test.sh."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "kube_bench.py")
sys.path.insert(0, HERE)
import kube_bench  # noqa: E402

# A process named like a component: a symlink to python3 (the kernel names the process after the
# link; 15 characters at most) sleeping with the flags as its arguments.
FAKE_BIN = "kfb-apiserver"
FLAGS = [
    "--profiling=false",
    "--audit-log-maxage=30",
    "--authorization-mode=Node,RBAC",
    "--tls-cipher-suites=TLS_A,TLS_B",
    "--enable-admission-plugins=NodeRestriction",
]

CONFIG = """
master:
  components: [apiserver, kubernetes, missing]
  apiserver:
    bins: ["kfb-not-running", "{bin}"]
    confs: ["{root}/absent.yaml", "{root}/manifests/apiserver.yaml", "{root}/also.yaml"]
    defaultconf: "{root}/default.yaml"
  kubernetes:
    defaultconf: "{root}/kubernetes-default"
  missing:
    optional: true
    bins: ["kfb-nothere"]
node:
  components: [kubelet, broken]
  kubelet:
    bins: ["kfb-nothere"]
    confs: ["{root}/kubelet/config.yaml"]
  broken:
    bins: ["kfb-nothere-either"]
"""

MASTER = """
controls:
version: "synthetic"
id: 1
text: "Synthetic master"
type: "master"
groups:
  - id: 1.1
    text: "files"
    checks:
      - id: 1.1.1
        text: "600 (first existing candidate)"
        audit: "stat -c permissions=%a $apiserverconf"
        tests:
          test_items:
            - flag: "permissions"
              compare: {op: bitmask, value: "600"}
        scored: true
      - id: 1.1.2
        text: "644 file against 600, scored"
        audit: "stat -c permissions=%a {root}/also.yaml"
        tests:
          test_items:
            - flag: "permissions"
              compare: {op: bitmask, value: "600"}
        scored: true
      - id: 1.1.3
        text: "644 file against 600, unscored"
        audit: "stat -c permissions=%a {root}/also.yaml"
        tests:
          test_items:
            - flag: "permissions"
              compare: {op: bitmask, value: "600"}
        scored: false
      - id: 1.1.4
        text: "default conf when no candidate exists"
        audit: "echo $kubernetesconf"
        tests:
          test_items:
            - flag: "kubernetes-default"
        scored: true
      - id: 1.1.5
        text: "ownership, or File not found"
        audit: "/bin/sh -c 'if test -e {root}/nothing; then stat -c %U:%G {root}/nothing; else echo \\"File not found\\"; fi'"
        tests:
          bin_op: or
          test_items:
            - flag: root:root
            - flag: "File not found"
        scored: true
      - id: 1.1.6
        text: "every line must pass (use_multiple_values)"
        audit: "stat -c permissions=%a {root}/manifests/apiserver.yaml {root}/also.yaml"
        use_multiple_values: true
        tests:
          test_items:
            - flag: "permissions"
              compare: {op: bitmask, value: "600"}
        scored: true
  - id: 1.2
    text: "flags"
    checks:
      - id: 1.2.1
        text: "eq false"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--profiling"
              compare: {op: eq, value: false}
        scored: true
      - id: 1.2.2
        text: "gte"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--audit-log-maxage"
              compare: {op: gte, value: 30}
        scored: true
      - id: 1.2.3
        text: "gt fails"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--audit-log-maxage"
              compare: {op: gt, value: 30}
        scored: true
      - id: 1.2.4
        text: "absent flag, set false"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--token-auth-file"
              set: false
        scored: true
      - id: 1.2.5
        text: "has and nothave, and"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          bin_op: and
          test_items:
            - flag: "--authorization-mode"
              compare: {op: has, value: "RBAC"}
            - flag: "--authorization-mode"
              compare: {op: nothave, value: "AlwaysAllow"}
        scored: true
      - id: 1.2.6
        text: "absent flag with a compare fails; or with set false passes"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          bin_op: or
          test_items:
            - flag: "--disable-admission-plugins"
              compare: {op: nothave, value: "ServiceAccount"}
            - flag: "--disable-admission-plugins"
              set: false
        scored: true
      - id: 1.2.7
        text: "has, absent value"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--enable-admission-plugins"
              compare: {op: has, value: "EventRateLimit"}
        scored: false
      - id: 1.2.8
        text: "valid_elements"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--tls-cipher-suites"
              compare: {op: valid_elements, value: "TLS_A,TLS_B,TLS_C"}
        scored: true
      - id: 1.2.9
        text: "valid_elements, one not allowed"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--tls-cipher-suites"
              compare: {op: valid_elements, value: "TLS_A,TLS_C"}
        scored: true
      - id: 1.2.10
        text: "regex"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--authorization-mode"
              compare: {op: regex, value: "^Node,"}
        scored: true
      - id: 1.2.11
        text: "env from the process's environment (the default audit_env)"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--kfb-setting"
              env: "KFB_SETTING"
              compare: {op: eq, value: "on"}
        scored: true
      - id: 1.2.12
        text: "noteq"
        audit: "/bin/ps -ef | grep $apiserverbin | grep -v grep"
        tests:
          test_items:
            - flag: "--profiling"
              compare: {op: noteq, value: "true"}
        scored: true
  - id: 1.3
    text: "states without audits"
    checks:
      - id: 1.3.1
        text: "manual"
        type: manual
        scored: true
      - id: 1.3.2
        text: "scored, no tests"
        scored: true
      - id: 1.3.3
        text: "scored, empty test list"
        type: "automated"
        tests:
          test_items: []
        scored: true
      - id: 1.3.4
        text: "audit command fails"
        audit: "exit 3"
        tests:
          test_items:
            - flag: "x"
        scored: false
  - id: 1.4
    text: "a skipped group"
    type: skip
    checks:
      - id: 1.4.1
        text: "would fail"
        audit: "echo nothing"
        tests:
          test_items:
            - flag: "--absent"
        scored: true
"""

NODE = """
id: 4
text: "Synthetic node"
type: "node"
groups:
  - id: 4.2
    text: "kubelet"
    checks:
      - id: 4.2.1
        text: "config file value through audit_config"
        audit: "/bin/ps -fC $kubeletbin"
        audit_config: "/bin/cat $kubeletconf"
        tests:
          test_items:
            - flag: "--anonymous-auth"
              path: '{.authentication.anonymous.enabled}'
              compare: {op: eq, value: false}
        scored: true
      - id: 4.2.2
        text: "range over a list"
        audit: "true"
        audit_config: "/bin/cat {root}/kubelet/config.yaml"
        tests:
          test_items:
            - flag: --tls-cipher-suites
              path: '{range .tlsCipherSuites[:]}{}{'',''}{end}'
              compare: {op: valid_elements, value: "TLS_A,TLS_B"}
        scored: false
      - id: 4.2.3
        text: "absent path, set false"
        audit: "true"
        audit_config: "/bin/cat {root}/kubelet/config.yaml"
        tests:
          bin_op: or
          test_items:
            - flag: "--read-only-port"
              path: '{.readOnlyPort}'
              compare: {op: eq, value: 0}
            - flag: "--read-only-port"
              path: '{.readOnlyPort}'
              set: false
        scored: false
      - id: 4.2.4
        text: "duration 0s is not 0"
        audit: "true"
        audit_config: "/bin/cat {root}/kubelet/config.yaml"
        tests:
          test_items:
            - flag: --streaming-connection-idle-timeout
              path: '{.streamingConnectionIdleTimeout}'
              compare: {op: noteq, value: 0}
        scored: false
      - id: 4.2.5
        text: "a number"
        audit: "true"
        audit_config: "/bin/cat {root}/kubelet/config.yaml"
        tests:
          test_items:
            - flag: --pod-max-pids
              path: '{.podPidsLimit}'
              compare: {op: gte, value: 4096}
        scored: true
"""


class Evaluator(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kube-bench-test-")
        root = cls.root = cls.dir
        os.makedirs(f"{root}/manifests")
        os.makedirs(f"{root}/kubelet")
        os.makedirs(f"{root}/cfg/synthetic")
        for path, mode in [("manifests/apiserver.yaml", 0o600), ("also.yaml", 0o644)]:
            with open(f"{root}/{path}", "w") as f:
                f.write("x\n")
            os.chmod(f"{root}/{path}", mode)
        with open(f"{root}/kubelet/config.yaml", "w") as f:
            f.write("authentication:\n  anonymous:\n    enabled: false\n"
                    "tlsCipherSuites:\n- TLS_A\n- TLS_B\npodPidsLimit: 4096\n"
                    "streamingConnectionIdleTimeout: 0s\n")
        link = f"{root}/{FAKE_BIN}"
        os.symlink(os.path.realpath(sys.executable), link)
        env = dict(os.environ, KFB_SETTING="on")
        cls.process = subprocess.Popen([link, "-c", "import time; time.sleep(120)", *FLAGS], env=env)
        deadline = time.time() + 10
        while not kube_bench.verify_bin(FAKE_BIN) and time.time() < deadline:
            time.sleep(0.05)
        fill = lambda text: text.replace("{root}", root).replace("{bin}", FAKE_BIN)  # noqa: E731
        for name, text in [("cfg/config.yaml", CONFIG), ("cfg/synthetic/master.yaml", MASTER),
                           ("cfg/synthetic/node.yaml", NODE)]:
            with open(f"{root}/{name}", "w") as f:
                f.write(fill(text))
        out = subprocess.run([sys.executable, SCRIPT, "--cfg", f"{root}/cfg", "--benchmark", "synthetic",
                              "--targets", "master,node", "--json"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        cls.report = json.loads(out.stdout)
        cls.states = {r["test_number"]: r["status"] for r in cls.report["results"]}

    @classmethod
    def tearDownClass(cls):
        cls.process.kill()
        cls.process.wait()
        shutil.rmtree(cls.dir)

    def expect(self, **states):
        for check, state in states.items():
            number = check.lstrip("c").replace("_", ".")
            self.assertEqual(self.states[number], state, f"check {number}")

    def test_files_and_first_existing_candidate(self):
        self.expect(c1_1_1="PASS", c1_1_2="FAIL", c1_1_3="WARN", c1_1_4="PASS", c1_1_5="PASS", c1_1_6="FAIL")

    def test_flags_of_the_running_binary(self):
        self.expect(c1_2_1="PASS", c1_2_2="PASS", c1_2_3="FAIL", c1_2_4="PASS", c1_2_5="PASS",
                    c1_2_6="PASS", c1_2_7="WARN", c1_2_8="PASS", c1_2_9="FAIL", c1_2_10="PASS",
                    c1_2_11="PASS", c1_2_12="PASS")

    def test_states_without_audits(self):
        self.expect(c1_3_1="WARN", c1_3_2="WARN", c1_3_3="FAIL", c1_3_4="WARN", c1_4_1="INFO")

    def test_config_file_paths(self):
        # The kubelet binary is missing (mandatory): like kube-bench, no $...bin is substituted,
        # and `ps -fC $kubeletbin` fails, so 4.2.1 fails although the config file says false.
        self.expect(c4_2_1="FAIL", c4_2_2="PASS", c4_2_3="PASS", c4_2_4="PASS", c4_2_5="PASS")

    def test_tally(self):
        totals = self.report["totals"]
        fails = [r["test_number"] for r in self.report["results"] if r["status"] == "FAIL"]
        self.assertEqual(sorted(fails), sorted(["1.1.2", "1.1.6", "1.2.3", "1.2.9", "1.3.3", "4.2.1"]))
        self.assertEqual(totals["scored_fail"], 6)
        self.assertEqual(totals["WARN"], 5)
        self.assertEqual(totals["INFO"], 1)

    def test_bad_target_exits_2(self):
        out = subprocess.run([sys.executable, SCRIPT, "--cfg", f"{self.root}/cfg", "--benchmark", "synthetic",
                              "--targets", "nosuch"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 2)
        self.assertIn("unknown target", out.stderr)


class Operators(unittest.TestCase):
    def test_compare_like_kube_bench(self):
        c = kube_bench.compare
        self.assertTrue(c("eq", "False", "false"))  # booleans compare lower-cased
        self.assertFalse(c("eq", "Off", "off"))  # other strings exactly
        self.assertTrue(c("bitmask", "640", "644"))
        self.assertFalse(c("bitmask", "644", "600"))
        self.assertFalse(c("gte", "abc", "1"))
        self.assertTrue(c("valid_elements", "", ""))
        self.assertFalse(c("valid_elements", "", "A"))
        self.assertTrue(c("valid_elements", "A, B,", "B,A"))

    def test_flag_values(self):
        self.assertEqual(kube_bench.find_flag("--a", "x --a=1 --b"), (True, "1", None))
        self.assertEqual(kube_bench.find_flag("--b", "x --a=1 --b"), (True, "true", None))
        self.assertEqual(kube_bench.find_flag("root:root", "root:root"), (True, "root:root", None))
        self.assertEqual(kube_bench.find_flag("key", "key: value"), (True, "value", None))

    def test_jsonpath(self):
        doc = {"a": {"b": [1, 2], "t": True}, "l": [{"n": "x"}, {"n": "y"}]}
        self.assertEqual(kube_bench.jsonpath("{.a.t}", doc), "true")
        self.assertEqual(kube_bench.jsonpath("{.a.b[1]}", doc), "2")
        self.assertEqual(kube_bench.jsonpath("{.nothing.here}", doc), "")
        self.assertEqual(kube_bench.jsonpath("{range .l[*]}{.n}{';'}{end}", doc), "x;y;")
        self.assertEqual(kube_bench.jsonpath("{.l[*].n}", doc), "x y")


if __name__ == "__main__":
    unittest.main()
