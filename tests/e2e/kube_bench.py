#!/usr/bin/env python3
"""Evaluates kube-bench's own check files (aquasecurity/kube-bench `cfg/`) on this host the way
kube-bench v0.x does (cmd/common.go runChecks, cmd/util.go, check/check.go, check/test.go): the
same variable substitution ($apiserverbin, $kubeletconf, ... from cfg/config.yaml merged with
cfg/<benchmark>/config.yaml, the first running binary / first existing file), the same audit
commands through /bin/sh, the same tests and states (PASS, FAIL, WARN, INFO).

The real kube-bench is a Go program this test host cannot build (no Go module proxy); its cfg is
data, read from --cfg and never committed to kubeforge.

    kube_bench.py --cfg DIR --benchmark cis-1.12 --targets master,etcd,controlplane,node [--json]

Prints every check's state and id, then the tally; exit 0 when the checks ran, 2 on bad input.
"""

import argparse
import json
import os
import re
import subprocess
import sys

try:
    import yaml
except ImportError:  # PyYAML comes with kubernetes-validate (scripts/test.sh)
    sys.exit("kube_bench.py needs PyYAML (python3 -m pip install pyyaml)")

TARGET_FILES = {
    "master": "master.yaml",
    "node": "node.yaml",
    "controlplane": "controlplane.yaml",
    "etcd": "etcd.yaml",
    "policies": "policies.yaml",
    "managedservices": "managedservices.yaml",
}

# cmd/util.go TypeMap: file type -> (candidates key, default key), and the substitution suffix.
FILE_TYPES = [
    ("conf", "confs", "defaultconf"),
    ("svc", "svc", "defaultsvc"),
    ("kubeconfig", "kubeconfig", "defaultkubeconfig"),
    ("cafile", "cafile", "defaultcafile"),
    ("datadir", "datadirs", "defaultdatadir"),
]


class BadInput(Exception):
    pass


def go_string(value):
    """A YAML scalar as yaml.v2 stores it in a Go string field."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def go_print(value):
    """fmt.Fprint of a decoded JSON/YAML value, as client-go's jsonpath prints it."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        inner = " ".join(f"{k}:{go_print(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
        return f"map[{inner}]"
    if isinstance(value, list):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    return str(value)


def merge(base, over):
    """viper's MergeInConfig: maps merge key by key, anything else is replaced."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(cfg_dir, benchmark):
    with open(os.path.join(cfg_dir, "config.yaml")) as f:
        config = yaml.safe_load(f) or {}
    specific = os.path.join(cfg_dir, benchmark, "config.yaml")
    if os.path.exists(specific):
        with open(specific) as f:
            merge(config, yaml.safe_load(f) or {})
    return config


def ps_lines(proc):
    out = subprocess.run(["/bin/ps", "-C", proc, "-o", "cmd", "--no-headers"],
                         capture_output=True, text=True)
    return out.stdout.split("\n")


def verify_bin(bin_):
    """cmd/util.go verifyBin: a process named by the first word whose command starts with bin."""
    bin_ = bin_.strip("'\"")
    first_word = re.compile(r"^(\S*/)*" + bin_)
    return any(first_word.match(line) for line in ps_lines(bin_.split()[0]))


def binaries(section):
    """cmd/util.go getBinaries: component -> running binary; None when a mandatory one is missing."""
    found = {}
    for component in section.get("components") or []:
        sub = section.get(component)
        if not isinstance(sub, dict):
            continue
        bins = [go_string(b) for b in sub.get("bins") or []]
        if not bins:
            continue
        running = next((b for b in bins if verify_bin(b)), "")
        if not running and not sub.get("optional", False):
            return None
        found[component] = running or component
    return found


def files(section, candidates_key, default_key):
    """cmd/util.go getFiles: the first existing candidate, else the default, else the component."""
    found = {}
    for component in section.get("components") or []:
        sub = section.get(component)
        if not isinstance(sub, dict):
            continue
        candidates = sub.get(candidates_key) or []
        if isinstance(candidates, str):
            candidates = [candidates]
        path = next((c for c in map(go_string, candidates) if os.path.exists(c)), "")
        if not path:
            path = go_string(sub[default_key]) if default_key in sub else component
        found[component] = path
    return found


def substitute(text, suffix, mapping):
    """cmd/util.go makeSubstitutions (longest names first, so no name eats another's prefix)."""
    used = []
    for component in sorted(mapping, key=len, reverse=True):
        value = mapping[component]
        if value == "":
            continue
        if len(value.split()) > 1:
            value = "'" + value + "'"
        before = text
        text = text.replace("$" + component + suffix, value)
        if text != before:
            used.append(mapping[component])
    return text, used


def run_audit(audit):
    """check/check.go runAudit: the script on /bin/sh's stdin, stdout and stderr together."""
    audit = (audit or "").strip()
    if not audit:
        return "", None
    done = subprocess.run(["/bin/sh"], input=audit, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    if done.returncode != 0:
        return done.stdout, f"failed to run: {audit!r}, output: {done.stdout!r}, error: exit status {done.returncode}"
    return done.stdout, None


# ---- client-go jsonpath, the part kube-bench's checks use: {.a.b}, [n], [:], [*], range/end,
# ---- quoted literals, {} (the current element).

def jsonpath_tokens(template):
    tokens, pos = [], 0
    while pos < len(template):
        start = template.find("{", pos)
        if start < 0:
            tokens.append(("text", template[pos:]))
            break
        if start > pos:
            tokens.append(("text", template[pos:start]))
        end = template.find("}", start)
        if end < 0:
            raise ValueError(f"unclosed action in {template!r}")
        tokens.append(("action", template[start + 1:end].strip()))
        pos = end + 1
    return tokens


def jsonpath_select(expr, roots):
    results = list(roots)
    expr = expr[1:] if expr.startswith("@") else expr
    for part in re.findall(r"\.\.|\.[^.\[]*|\[[^\]]*\]", expr):
        nxt = []
        for value in results:
            if part == "..":
                raise ValueError("recursive descent is not supported")
            if part.startswith("."):
                name = part[1:]
                if name in ("", "*"):
                    nxt.extend(value.values() if isinstance(value, dict) else value if isinstance(value, list) else [])
                elif isinstance(value, dict) and name in value:
                    nxt.append(value[name])
                continue
            inner = part[1:-1].strip()
            if inner in ("*", ":") and isinstance(value, (list, dict)):
                nxt.extend(value if isinstance(value, list) else value.values())
            elif re.fullmatch(r"-?\d+", inner) and isinstance(value, list):
                i = int(inner)
                if -len(value) <= i < len(value):
                    nxt.append(value[i])
            elif re.fullmatch(r"'[^']*'|\"[^\"]*\"", inner) and isinstance(value, dict):
                if inner[1:-1] in value:
                    nxt.append(value[inner[1:-1]])
            elif not re.fullmatch(r"\*|:|-?\d+|'[^']*'|\"[^\"]*\"", inner):
                raise ValueError(f"unsupported jsonpath element {part!r}")
        results = nxt
    return results


def jsonpath(template, document):
    def render(tokens, roots):
        text, i = [], 0
        while i < len(tokens):
            kind, body = tokens[i]
            if kind == "text":
                text.append(body)
            elif body.startswith("range "):
                depth, j = 1, i + 1
                while j < len(tokens) and depth:
                    if tokens[j][0] == "action" and tokens[j][1].startswith("range "):
                        depth += 1
                    if tokens[j] == ("action", "end"):
                        depth -= 1
                    j += 1
                if depth:
                    raise ValueError("range without end")
                for item in jsonpath_select(body[6:].strip(), roots):
                    text.append(render(tokens[i + 1:j - 1], [item]))
                i = j
                continue
            elif re.fullmatch(r"'[^']*'|\"[^\"]*\"", body):
                text.append(body[1:-1])
            elif body in ("", "@"):
                text.append(" ".join(go_print(r) for r in roots))
            else:
                text.append(" ".join(go_print(r) for r in jsonpath_select(body, roots)))
            i += 1
        return "".join(text)

    return render(jsonpath_tokens(template), [document])


# ---- check/test.go

def find_flag(flag, s):
    if s == "" or flag == "":
        return False, "", None
    if flag not in s:
        return False, "", None
    m = re.search("(" + flag + r")(=|: *)*([^\s]*) *", s)
    if not m:
        return True, "", f"invalid flag in testItem definition: {s}"
    if m.group(3):
        return True, m.group(3), None
    return True, ("true" if flag.startswith("--") else m.group(1)), None


def find_path(path, s):
    try:
        document = json.loads(s)
    except ValueError:
        try:
            document = yaml.safe_load(s)
        except yaml.YAMLError as e:
            return False, "", f'failed to load YAML or JSON from input "{s}": {e}'
    try:
        value = jsonpath(path, document)
    except ValueError as e:
        return False, "", f'unable to parse path expression "{path}": {e}'
    return value != "", value, None


def find_env(env, s):
    if s == "" or env == "":
        return False, "", None
    m = re.search(re.escape(env) + r"=.*(?:$|\n)", s, re.M)
    value = m.group(0).replace("\n", "", 1).replace(env + "=", "", 1) if m else ""
    return bool(value), value, None


def numbers(a, b):
    if not (re.fullmatch(r"[+-]?\d+", a.strip()) and re.fullmatch(r"[+-]?\d+", b.strip())):
        return None
    return int(a.strip()), int(b.strip())


def elements(s):
    s = s.strip().rstrip(",")
    return [e.strip() for e in s.split(",")] if s else []


def compare(op, value, expected):
    if op in ("eq", "noteq"):
        lowered = value.lower()
        equal = (lowered == expected) if lowered in ("true", "false") else (value == expected)
        return equal if op == "eq" else not equal
    if op in ("gt", "gte", "lt", "lte"):
        pair = numbers(value, expected)
        if pair is None:
            return False
        a, b = pair
        return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]
    if op == "has":
        return expected in value
    if op == "nothave":
        return expected not in value
    if op == "regex":
        return re.search(expected, value) is not None
    if op == "valid_elements":
        have, allowed = elements(value), elements(expected)
        if not have and not allowed:
            return True
        if not have or not allowed:
            return False
        return all(e in allowed for e in have)
    if op == "bitmask":
        if not (re.fullmatch(r"[+-]?[0-7]+", value) and re.fullmatch(r"[+-]?[0-7]+", expected)):
            return False
        requested, allowed = int(value, 8), int(expected, 8)
        return allowed & requested == requested
    return False


class TestItem:
    def __init__(self, raw):
        raw = raw or {}
        self.flag = go_string(raw.get("flag"))
        self.env = go_string(raw.get("env"))
        self.path = go_string(raw.get("path"))
        self.set = raw.get("set", True) is not False
        cmp = raw.get("compare") or {}
        self.op = go_string(cmp.get("op"))
        self.value = go_string(cmp.get("value"))

    def evaluate(self, used, s):
        """(passed, found) for one output."""
        finder = {"command": lambda: find_flag(self.flag, s),
                  "config": lambda: find_path(self.path, s),
                  "env": lambda: find_env(self.env, s)}[used]
        match, value, err = finder()
        if err:
            sys.stderr.write(err)
            return False, False
        if not self.set:
            return not match, match
        if match and self.op:
            return compare(self.op, value, self.value), match
        return match, match

    def execute(self, used, s, multiple):
        s = s.rstrip(" \n")
        result = (False, False)
        for line in (s.split("\n") if multiple else [s]):
            result = self.evaluate(used, line)
            if not result[0]:
                break
        return result


class Check:
    def __init__(self, raw, group_skipped):
        self.id = go_string(raw.get("id"))
        self.text = go_string(raw.get("text"))
        self.audit = go_string(raw.get("audit"))
        self.audit_env = go_string(raw.get("audit_env"))
        self.audit_config = go_string(raw.get("audit_config"))
        self.type = "skip" if group_skipped else go_string(raw.get("type"))
        self.scored = bool(raw.get("scored", False))
        self.multiple = bool(raw.get("use_multiple_values", False))
        self.disable_env = bool(raw.get("disableenvtesting", False))
        tests = raw.get("tests")
        self.has_tests = tests is not None
        tests = tests or {}
        self.items = [TestItem(t) for t in tests.get("test_items") or []]
        self.bin_op = go_string(tests.get("bin_op"))
        self.reason = ""

    def failed(self):
        return "FAIL" if self.scored else "WARN"

    def run(self):
        """check/check.go Check.run."""
        if self.scored and self.type.strip() == "" and not self.has_tests:
            self.reason = "There are no tests"
            return "WARN"
        if self.type == "skip":
            self.reason = "Test marked as skip"
            return "INFO"
        if self.type == "manual":
            self.reason = "Test marked as a manual test"
            return "WARN"
        if not self.items:
            self.reason = "No tests defined"
            return self.failed()
        outputs, err = self.run_audits()
        if err:
            self.reason = err
            return self.failed()
        passed, err = self.execute(outputs)
        if err:
            self.reason = err
            return self.failed()
        return "PASS" if passed else self.failed()

    def run_audits(self):
        env_out = ""
        if self.audit_env:
            env_out, err = run_audit(self.audit_env)
            if err:
                return None, err
        out, err = run_audit(self.audit)
        if err:
            return None, err
        config_out, err = run_audit(self.audit_config)
        if err and ("exit status 127" in err or "No such file or directory" in err) and (env_out or out):
            err, config_out = None, ""
        if err:
            return None, err
        return {"command": out, "config": config_out, "env": env_out}, None

    def execute(self, outputs):
        results = []
        for t in self.items:
            passed, found = t.execute("command", outputs["command"], self.multiple)
            if not found and self.audit_config and outputs["config"]:
                passed, found = t.execute("config", outputs["config"], self.multiple)
                if not found and t.env:
                    passed, found = t.execute("env", outputs["env"], self.multiple)
            if not found and t.env:
                passed, found = t.execute("env", outputs["env"], self.multiple)
            results.append(passed)
        if self.bin_op in ("", "and"):
            return all(results), None
        if self.bin_op == "or":
            return any(results), None
        return False, f"unknown binary operator for tests {self.bin_op}"


def default_env_audit(checks, bin_subs):
    """cmd/common.go generateDefaultEnvAudit."""
    for check in checks:
        if check.disable_env or not check.has_tests:
            continue
        if any(t.env for t in check.items) and not check.audit_env:
            bin_path = bin_subs[0] if len(bin_subs) == 1 else ""
            check.audit_env = (f'cat "/proc/$(/bin/ps -C {bin_path} -o pid= | tr -d \' \')/environ"'
                               " | tr '\\0' '\\n'")


def controls_text(cfg_dir, benchmark, target, config):
    path = os.path.join(cfg_dir, benchmark, TARGET_FILES[target])
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such check file for target {target}")
    with open(path) as f:
        text = f.read()
    section = config.get(target)
    if not isinstance(section, dict):
        raise BadInput(f"{cfg_dir}/config.yaml: no settings for {target}")
    bins = binaries(section)
    text, bin_subs = substitute(text, "bin", bins or {})
    for suffix, candidates_key, default_key in FILE_TYPES:
        text, _ = substitute(text, suffix, files(section, candidates_key, default_key))
    return text, bin_subs


def run_target(cfg_dir, benchmark, target, config):
    text, bin_subs = controls_text(cfg_dir, benchmark, target, config)
    try:
        controls = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise BadInput(f"{benchmark}/{TARGET_FILES[target]}: {e}")
    if go_string(controls.get("type")) != target:
        raise BadInput(f"{benchmark}/{TARGET_FILES[target]}: non-{target} controls file specified")
    groups = []
    for group in controls.get("groups") or []:
        skipped = go_string(group.get("type")) == "skip"
        groups.append((group, [Check(c, skipped) for c in group.get("checks") or []]))
    default_env_audit([c for _, checks in groups for c in checks], bin_subs)
    results = []
    for group, checks in groups:
        for check in checks:
            state = check.run()
            results.append({"target": target, "section": go_string(group.get("id")),
                            "test_number": check.id, "test_desc": check.text,
                            "scored": check.scored, "status": state, "reason": check.reason})
    return results


def tally(results):
    counts = {state: sum(r["status"] == state for r in results) for state in ("PASS", "FAIL", "WARN", "INFO")}
    counts["scored_fail"] = sum(r["status"] == "FAIL" and r["scored"] for r in results)
    return counts


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", required=True, help="kube-bench's cfg directory")
    parser.add_argument("--benchmark", default="cis-1.12")
    parser.add_argument("--targets", default="master,etcd,controlplane,node")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.cfg, args.benchmark)
        results = []
        for target in filter(None, args.targets.split(",")):
            if target not in TARGET_FILES:
                raise BadInput(f"--targets: unknown target {target!r}")
            results += run_target(args.cfg, args.benchmark, target, config)
    except (BadInput, OSError, yaml.YAMLError) as e:
        print(f"kube_bench.py: {e}", file=sys.stderr)
        return 2
    counts = tally(results)
    if args.json:
        print(json.dumps({"results": results, "totals": counts}, indent=1))
    else:
        for r in results:
            print(f"[{r['status']}] {r['test_number']} {r['test_desc']}" + ("" if r["scored"] else " (unscored)"))
        print(f"== {counts['PASS']} PASS, {counts['FAIL']} FAIL ({counts['scored_fail']} scored), "
              f"{counts['WARN']} WARN, {counts['INFO']} INFO ==")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
