"""Tests of the MetaClinic Helm chart, rendered by the real Helm engine.

helm-python-sdk carries Helm v4 as a library (libhelm_c, the C ABI over Helm's Go SDK), so
this renders, lints and validates exactly as `helm template` / `helm lint` would, offline and
without a helm binary. Run it with scripts/test-helm (which sets up the venv), or directly:

    python -m unittest -v helm/test_chart.py
"""

from __future__ import annotations

import base64
import copy
import json
import re
import tomllib
import unittest
from pathlib import Path

import helm_python as helm
import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE / "metaclinic"
REPO = HERE.parent
PRODUCTION = CHART / "ci" / "production-values.yaml"
KUBE_VERSION = "v1.31.0"


def production_values() -> dict:
    return yaml.safe_load(PRODUCTION.read_text())


def merged(base: dict, override: dict) -> dict:
    """Helm's coalescing, for tests that tweak one value."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Rendered:
    """The manifests of one render, by kind and name."""

    def __init__(self, values: dict | None = None):
        with helm.Chart.load(CHART) as chart:
            self.files = chart.render(values, name="mc", namespace="clinic", is_install=True)
        self.notes = self.files.get("metaclinic/templates/NOTES.txt", "")
        self.objects = []
        for path, text in self.files.items():
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append(doc)

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)} in {self.names()}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(o["metadata"]["name"] == name for o in self.all(kind))

    def names(self) -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects)

    # The objects most tests look at.
    def sfu(self) -> dict:
        return self.get("DaemonSet", "mc-metaclinic-sfu")

    def signaling(self) -> dict:
        return self.get("Deployment", "mc-metaclinic-signaling")

    def toml(self, component: str) -> dict:
        cm = self.get("ConfigMap", f"mc-metaclinic-{component}")
        return tomllib.loads(cm["data"][f"{component}.toml"])


def container(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]["containers"][0]


def env(workload: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(workload)["env"]}


def checksum(workload: dict) -> str:
    return workload["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def sample_keys(path: Path) -> set[str]:
    """Every dotted key of a documented sample config (config/*.toml)."""
    keys: set[str] = set()

    def walk(prefix: str, table: dict) -> None:
        for key, value in table.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(name + ".", value)
            else:
                keys.add(name)

    walk("", tomllib.loads(path.read_text()))
    return keys


def dockerfile_instruction(name: str) -> list[str]:
    """The arguments of each `NAME ...` line in the Dockerfile's last stage (the image)."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return [line.split(None, 1)[1] for line in lines[last:] if line.split(None, 1)[:1] == [name]]


def dockerfile_arg(name: str) -> str:
    return next(a.split("=", 1)[1] for a in dockerfile_instruction("ARG")
                if a.startswith(f"{name}="))


class ChartTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.default = Rendered()
        cls.production = Rendered(production_values())

    # -- Helm's own checks ------------------------------------------------------------------

    def test_helm_is_the_real_engine(self):
        self.assertTrue(helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version())

    def test_lints_clean_with_default_and_production_values(self):
        for name, values in [("default", None), ("production", production_values())]:
            with self.subTest(values=name):
                report = helm.lint(CHART, values, strict=True, kube_version=KUBE_VERSION)
                self.assertEqual(report["errors"], [], report)
                serious = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(serious, [], report)

    def test_values_validate_against_the_schema(self):
        schema = json.loads((CHART / "values.schema.json").read_text())
        defaults = yaml.safe_load((CHART / "values.yaml").read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        jsonschema.validate(defaults, schema)
        jsonschema.validate(merged(defaults, production_values()), schema)
        with helm.Chart.load(CHART) as chart:
            chart.validate_schema(production_values())

    def test_a_misspelt_key_is_refused(self):
        schema = json.loads((CHART / "values.schema.json").read_text())
        defaults = yaml.safe_load((CHART / "values.yaml").read_text())
        typos = [
            {"signaling": {"replicaCont": 3}},
            {"sfu": {"config": {"rtc": {"udp_prot": 40000}}}},
            {"signaling": {"config": {"identity": {"isuer": "https://idp"}}}},
            {"sfu": {"terminationGracePeriod": 60}},
            {"monitoring": {"serviceMonitors": {"enabled": True}}},
        ]
        for typo in typos:
            with self.subTest(typo=typo):
                with self.assertRaises(jsonschema.ValidationError):
                    jsonschema.validate(merged(defaults, typo), schema)
                with helm.Chart.load(CHART) as chart:
                    with self.assertRaises(helm.HelmValuesError) as refused:
                        chart.render(typo, name="mc")
                self.assertIn("additional properties", str(refused.exception))

    def test_keys_the_chart_owns_are_refused_in_values(self):
        for owned in [
            {"sfu": {"config": {"control": {"credential": "x" * 20}}}},
            {"sfu": {"config": {"node": {"announced_ip": "1.2.3.4"}}}},
            {"signaling": {"config": {"sfu": {"nodes": []}}}},
            {"signaling": {"config": {"dev": {"enabled": True}}}},
        ]:
            with self.subTest(owned=owned):
                with helm.Chart.load(CHART) as chart:
                    with self.assertRaises(helm.HelmValuesError):
                        chart.render(owned, name="mc")

    def test_bad_values_are_refused(self):
        for bad in [
            {"sfu": {"config": {"rtc": {"tcp_port": 443}}}},  # < 1024 needs a capability
            {"secrets": {"controlCredential": {"value": "short"}}},
            {"signaling": {"sfuNodes": []}},
            {"logFormat": "xml"},
        ]:
            with self.subTest(bad=bad):
                with helm.Chart.load(CHART) as chart:
                    with self.assertRaises(helm.HelmValuesError):
                        chart.render(bad, name="mc")

    # -- SFU ----------------------------------------------------------------------------------

    def test_sfu_runs_one_per_node_on_the_host_network(self):
        for r in (self.default, self.production):
            spec = r.sfu()["spec"]["template"]["spec"]
            self.assertTrue(spec["hostNetwork"])
            self.assertEqual(spec["dnsPolicy"], "ClusterFirstWithHostNet")
        spec = self.production.sfu()["spec"]["template"]["spec"]
        self.assertEqual(spec["nodeSelector"], {"metaclinic.org/media": "true"})
        self.assertEqual(spec["tolerations"][0]["key"], "metaclinic.org/media")

    def test_sfu_ports_follow_the_configuration(self):
        ports = container(self.production.sfu())["ports"]
        udp = sorted(p["containerPort"] for p in ports if p["protocol"] == "UDP")
        udp.remove(3478)  # TURN
        self.assertEqual(udp, list(range(40000, 40008)))  # media_threads = 8
        tcp = {p["name"]: p["containerPort"] for p in ports if p["protocol"] == "TCP"}
        self.assertEqual(tcp, {"ice-tcp": 4443, "control": 7001, "turn-tcp": 3478, "turn-tls": 5349})
        for p in ports:
            self.assertEqual(p["hostPort"], p["containerPort"])
        default_ports = {(p["protocol"], p["containerPort"]) for p in container(self.default.sfu())["ports"]}
        self.assertEqual(default_ports, {("UDP", 40000), ("TCP", 40000), ("TCP", 7001),
                                         ("UDP", 3478), ("TCP", 3478)})

    def test_sfu_turn_server_ports_certificate_and_secret(self):
        # Production: TLS from a cert-manager Secret, mounted as a directory (renewals reach
        # the pod), on an unprivileged port that clients know as 443.
        ds = self.production.sfu()
        turn = self.production.toml("sfu")["turn"]
        self.assertEqual(turn["tls_port"], 5349)
        self.assertEqual(turn["tls_public_port"], 443)
        self.assertEqual(turn["tls_cert_path"], "/etc/metaclinic/turn-tls/tls.crt")
        self.assertEqual(turn["tls_key_path"], "/etc/metaclinic/turn-tls/tls.key")
        self.assertEqual(turn["tls_host"], "{node}.turn.hospital.example")
        self.assertNotIn("shared_secret", turn)
        spec = ds["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in spec["volumes"]}
        self.assertEqual(vols["turn-tls"]["secret"], {"secretName": "metaclinic-turn-tls"})
        mounts = {m["name"]: m for m in container(ds)["volumeMounts"]}
        self.assertEqual(mounts["turn-tls"]["mountPath"], "/etc/metaclinic/turn-tls")
        self.assertNotIn("subPath", mounts["turn-tls"])
        # One secret for the nodes and signaling (which signs the clients' credentials).
        for w, name in [(ds, "METACLINIC_SFU__TURN__SHARED_SECRET"),
                        (self.production.signaling(),
                         "METACLINIC_SIGNALING__ICE_SERVERS__TURN_SHARED_SECRET")]:
            self.assertEqual(env(w)[name]["valueFrom"]["secretKeyRef"],
                             {"name": "metaclinic-turn", "key": "shared-secret"})
        # Default: no certificate, so no TLS listener; the secret is generated.
        self.assertEqual(self.default.toml("sfu")["turn"]["tls_port"], 0)
        secret = self.default.get("Secret", "mc-metaclinic-secrets")
        self.assertRegex(base64.b64decode(secret["data"]["turn-shared-secret"]).decode(),
                         r"^[A-Za-z0-9]{48}$")
        # Off: no ports, no secret in the environment.
        off = Rendered({"sfu": {"turn": {"enabled": False}}})
        self.assertFalse(off.toml("sfu")["turn"]["enabled"])
        names = {p["name"] for p in container(off.sfu())["ports"]}
        self.assertFalse({"turn-udp", "turn-tcp", "turn-tls"} & names)
        self.assertNotIn("METACLINIC_SFU__TURN__SHARED_SECRET", env(off.sfu()))
        # The TLS port must be one the pod can bind; the chart owns the sfu.toml section.
        for bad in [{"sfu": {"turn": {"tlsPort": 443}}},
                    {"sfu": {"config": {"turn": {"udp_port": 3478}}}},
                    {"secrets": {"turnSecret": {"value": "short"}}}]:
            with self.subTest(bad=bad):
                with helm.Chart.load(CHART) as chart:
                    with self.assertRaises(helm.HelmValuesError):
                        chart.render(bad, name="mc")

    def test_sfu_announces_the_host_ip_and_takes_its_identity_from_the_node(self):
        e = env(self.production.sfu())
        self.assertEqual(
            e["METACLINIC_SFU__NODE__ANNOUNCED_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
            "status.hostIP",
        )
        self.assertEqual(
            e["METACLINIC_SFU__NODE__ID"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName"
        )
        self.assertEqual(
            e["METACLINIC_SFU__CONTROL__CREDENTIAL"]["valueFrom"]["secretKeyRef"],
            {"name": "metaclinic-control", "key": "credential"},
        )

    def test_sfu_probes_grace_period_and_prestop(self):
        for r, grace in [(self.default, 3600), (self.production, 5400)]:
            ds = r.sfu()
            c = container(ds)
            for probe in ("startupProbe", "livenessProbe"):
                self.assertEqual(c[probe]["httpGet"], {"path": "/healthz", "port": "control"})
            self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "control"})
            self.assertEqual(ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], grace)
            self.assertIn("preStop", c["lifecycle"])

    def test_sfu_configuration_is_what_the_node_needs(self):
        sfu = self.production.toml("sfu")
        self.assertEqual(sfu["control"]["listen"], "0.0.0.0:7001")
        self.assertEqual(
            sfu["spatial"]["hrtf_path"], "/usr/share/metaclinic/hrtf/MIT_KEMAR_normal_pinna.sofa"
        )
        self.assertEqual(sfu["rtc"]["media_threads"], 8)
        self.assertEqual(sfu["rtc"]["socket_buffer_bytes"], 8388608)  # not 8.388608e+06
        self.assertNotIn("node", sfu)  # from the environment
        self.assertNotIn("credential", sfu["control"])

    def test_sfu_control_api_listens_on_the_node_address_only(self):
        for r in (self.default, self.production):
            env = {e["name"]: e for e in container(r.sfu())["env"]}
            self.assertEqual(
                env["METACLINIC_SFU__CONTROL__LISTEN"]["value"],
                "$(METACLINIC_SFU__NODE__ANNOUNCED_IP):7001",
            )
            names = [e["name"] for e in container(r.sfu())["env"]]
            # Kubernetes expands $(VAR) only from variables defined before it.
            self.assertLess(
                names.index("METACLINIC_SFU__NODE__ANNOUNCED_IP"),
                names.index("METACLINIC_SFU__CONTROL__LISTEN"),
            )

    def test_sfu_network_policy_admits_signaling_to_the_control_port(self):
        self.assertTrue(self.default.has("NetworkPolicy", "mc-metaclinic-sfu"), "on by default")
        np = self.production.get("NetworkPolicy", "mc-metaclinic-sfu")
        control, media = np["spec"]["ingress"]
        self.assertEqual(
            control["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "signaling",
        )
        self.assertEqual(control["ports"], [{"port": 7001, "protocol": "TCP"}])
        self.assertIn({"port": 40000, "endPort": 40007, "protocol": "UDP"}, media["ports"])
        self.assertNotIn("from", media)  # media is open to every client

    # -- Signaling ------------------------------------------------------------------------

    def test_signaling_probes_grace_period_and_prestop(self):
        d = self.default.signaling()
        c = container(d)
        self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "http"})
        self.assertEqual(c["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "http"})
        self.assertEqual(d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 300)
        self.assertIn("preStop", c["lifecycle"])

    def test_signaling_service_ingress_and_hpa(self):
        svc = self.default.get("Service", "mc-metaclinic-signaling")
        self.assertEqual(svc["spec"]["ports"][0]["targetPort"], "http")
        self.assertEqual(container(self.default.signaling())["ports"][0]["containerPort"], 8080)
        self.assertFalse(self.default.all("Ingress"))

        ing = self.production.get("Ingress", "mc-metaclinic-signaling")
        notes = ing["metadata"]["annotations"]
        self.assertEqual(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600")
        self.assertEqual(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"], "3600")
        self.assertEqual(notes["cert-manager.io/cluster-issuer"], "hospital-ca")
        rule = ing["spec"]["rules"][0]
        self.assertEqual(rule["host"], "video.hospital.example")
        self.assertEqual([p["path"] for p in rule["http"]["paths"]], ["/v1"])  # not /metrics
        self.assertEqual(ing["spec"]["tls"][0]["hosts"], ["video.hospital.example"])
        self.assertEqual(self.production.toml("signaling")["http"]["public_url"],
                         "https://video.hospital.example")

        hpa = self.production.get("HorizontalPodAutoscaler", "mc-metaclinic-signaling")
        self.assertEqual((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (3, 12))
        self.assertNotIn("replicas", self.production.signaling()["spec"])
        fixed = Rendered({"signaling": {"autoscaling": {"enabled": False}, "replicaCount": 4}})
        self.assertEqual(fixed.signaling()["spec"]["replicas"], 4)
        self.assertFalse(fixed.all("HorizontalPodAutoscaler"))

    def test_signaling_gets_the_sfu_nodes_with_the_credential_from_the_secret(self):
        # Without Redis: the static node list.
        static = Rendered(merged(production_values(), {"redis": {"bundled": {"enabled": False}}}))
        e = env(static.signaling())
        names = [x["name"] for x in container(static.signaling())["env"]]
        # Kubernetes substitutes $(VAR) only from variables defined earlier in the list.
        self.assertLess(names.index("SFU_CONTROL_CREDENTIAL"),
                        names.index("METACLINIC_SIGNALING__SFU__NODES"))
        self.assertEqual(e["SFU_CONTROL_CREDENTIAL"]["valueFrom"]["secretKeyRef"]["name"],
                         "metaclinic-control")
        nodes = e["METACLINIC_SIGNALING__SFU__NODES"]["value"]
        # figment's environment syntax: [{key="value",...},...]
        entry = r'\{id="([^"]+)",url="([^"]+)",credential="\$\(SFU_CONTROL_CREDENTIAL\)"\}'
        self.assertRegex(nodes, rf"^\[{entry}(,{entry})*\]$")
        self.assertEqual(re.findall(r'id="([^"]+)"', nodes), ["media-a", "media-b", "media-c"])
        self.assertNotIn("METACLINIC_SIGNALING__REDIS__URL", e)
        self.assertNotIn("METACLINIC_SFU__REDIS__URL", env(static.sfu()))
        # Only METACLINIC_SIGNALING__* variables that are real config keys.
        keys = {"METACLINIC_SIGNALING__SFU__NODES", "METACLINIC_SIGNALING__AUDIT__PATH",
                "METACLINIC_SIGNALING__AUDIT__CHECKPOINT_PATH",
                "METACLINIC_SIGNALING__AUDIT__KEY_FILE",
                "METACLINIC_SIGNALING__DRAIN__DEADLINE_S", "METACLINIC_SIGNALING__REDIS__URL",
                "METACLINIC_SIGNALING__SFU__CREDENTIAL",
                "METACLINIC_SIGNALING__WEBHOOKS__OUTBOX_PATH",
                "METACLINIC_SIGNALING__ICE_SERVERS__TURN_SHARED_SECRET"}
        for name in e:
            if name.startswith("METACLINIC_SIGNALING__"):
                self.assertIn(name, keys)
        self.assertFalse(self.production.signaling()["spec"]["template"]["spec"]["enableServiceLinks"])

    def test_webhook_endpoints_reach_signaling_as_a_list_of_tables(self):
        endpoints = [
            {"name": "records", "url": "https://ehr.hospital.example/hooks", "events": [],
             "secret_file": "/etc/metaclinic/webhooks/records"},
            {"name": "billing", "url": "https://billing.hospital.example/in",
             "events": ["consultation.ended"], "secret_file": "/etc/metaclinic/webhooks/billing"},
        ]
        r = Rendered({"signaling": {"config": {"webhooks": {"endpoints": endpoints}}}})
        self.assertEqual(r.toml("signaling")["webhooks"]["endpoints"], endpoints)
        self.assertEqual(self.production.toml("signaling")["webhooks"]["endpoints"], [])

    def test_with_redis_nodes_register_and_signaling_reads_the_registry(self):
        e = env(self.production.signaling())
        url = "redis://mc-metaclinic-redis.clinic.svc:6379/0"
        self.assertEqual(e["METACLINIC_SIGNALING__REDIS__URL"]["value"], url)
        self.assertNotIn("METACLINIC_SIGNALING__SFU__NODES", e)
        names = [x["name"] for x in container(self.production.signaling())["env"]]
        self.assertLess(names.index("SFU_CONTROL_CREDENTIAL"),
                        names.index("METACLINIC_SIGNALING__SFU__CREDENTIAL"))
        self.assertEqual(e["METACLINIC_SIGNALING__SFU__CREDENTIAL"]["value"],
                         "$(SFU_CONTROL_CREDENTIAL)")
        self.assertEqual(env(self.production.sfu())["METACLINIC_SFU__REDIS__URL"]["value"], url)
        external = Rendered({"redis": {"url": "redis://redis.example:6379/0"}})
        self.assertEqual(env(external.sfu())["METACLINIC_SFU__REDIS__URL"]["value"],
                         "redis://redis.example:6379/0")

    def test_drain_deadlines_fit_in_the_grace_periods(self):
        for r in (self.default, self.production):
            ds, d = r.sfu(), r.signaling()
            sfu_grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            sig_grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            sfu_deadline = int(env(ds)["METACLINIC_SFU__DRAIN__DEADLINE_S"]["value"])
            sig_deadline = int(env(d)["METACLINIC_SIGNALING__DRAIN__DEADLINE_S"]["value"])
            self.assertTrue(0 < sfu_deadline < sfu_grace, (sfu_deadline, sfu_grace))
            self.assertTrue(0 < sig_deadline < sig_grace, (sig_deadline, sig_grace))

    def test_audit_log_per_pod_on_a_claim(self):
        d = self.production.signaling()
        self.assertEqual(env(d)["METACLINIC_SIGNALING__AUDIT__PATH"]["value"],
                         "/var/lib/metaclinic/audit/$(POD_NAME).jsonl")
        vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(vols["audit"]["persistentVolumeClaim"]["claimName"], "mc-metaclinic-audit")
        pvc = self.production.get("PersistentVolumeClaim", "mc-metaclinic-audit")
        self.assertEqual(pvc["spec"]["storageClassName"], "nfs-audit")
        vols = {v["name"]: v for v in self.default.signaling()["spec"]["template"]["spec"]["volumes"]}
        self.assertIn("emptyDir", vols["audit"])
        self.assertIn("audit log is on emptyDir", self.default.notes)

    # -- Both -------------------------------------------------------------------------------

    def test_pod_disruption_budgets(self):
        for r in (self.default, self.production):
            self.assertEqual(r.get("PodDisruptionBudget", "mc-metaclinic-signaling")["spec"]["minAvailable"], 1)
            self.assertEqual(r.get("PodDisruptionBudget", "mc-metaclinic-sfu")["spec"]["maxUnavailable"], 1)

    def test_security_context(self):
        for r in (self.default, self.production):
            for w in (r.sfu(), r.signaling()):
                pod = w["spec"]["template"]["spec"]
                self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                sc = container(w)["securityContext"]
                self.assertTrue(sc["readOnlyRootFilesystem"])
                self.assertFalse(sc["allowPrivilegeEscalation"])
                self.assertEqual(sc["capabilities"], {"drop": ["ALL"]})
                self.assertFalse(pod["automountServiceAccountToken"])

    def test_a_config_change_rolls_only_the_pods_it_concerns(self):
        base = production_values()
        before = Rendered(base)
        sfu_change = Rendered(merged(base, {"sfu": {"config": {"rooms": {"max_rooms": 1999}}}}))
        sig_change = Rendered(merged(base, {"signaling": {"config": {"policy": {"lead_min": 5}}}}))
        again = Rendered(base)

        self.assertEqual(checksum(before.sfu()), checksum(again.sfu()))  # deterministic
        self.assertEqual(checksum(before.signaling()), checksum(again.signaling()))
        self.assertNotEqual(checksum(before.sfu()), checksum(sfu_change.sfu()))
        self.assertEqual(checksum(before.signaling()), checksum(sfu_change.signaling()))
        self.assertNotEqual(checksum(before.signaling()), checksum(sig_change.signaling()))
        self.assertEqual(checksum(before.sfu()), checksum(sig_change.sfu()))
        self.assertEqual(sfu_change.toml("sfu")["rooms"]["max_rooms"], 1999)

    def test_rendered_configuration_uses_only_documented_keys(self):
        # The processes refuse unknown keys: every rendered key must be in the samples.
        for component in ("sfu", "signaling"):
            documented = sample_keys(REPO / "config" / f"{component}.toml")
            for r in (self.default, self.production):
                with self.subTest(component=component):
                    rendered = set()

                    def walk(prefix, table):
                        for k, v in table.items():
                            if isinstance(v, dict):
                                walk(f"{prefix}{k}.", v)
                            else:
                                rendered.add(f"{prefix}{k}")

                    walk("", r.toml(component))
                    self.assertLessEqual(rendered, documented, rendered - documented)

    def test_no_secret_value_in_a_config_map(self):
        credential = "Cr3dential-0123456789-sentinel"
        pem = "-----BEGIN PRIVATE KEY-----\nS3cretKeySentinel\n-----END PRIVATE KEY-----\n"
        r = Rendered({"secrets": {"controlCredential": {"value": credential},
                                  "bookingKey": {"value": pem}}})
        for cm in r.all("ConfigMap"):
            text = yaml.safe_dump(cm)
            self.assertNotIn(credential, text)
            self.assertNotIn("S3cretKeySentinel", text)
        for w in (r.sfu(), r.signaling()):
            self.assertNotIn(credential, yaml.safe_dump(w))
        secret = r.get("Secret", "mc-metaclinic-secrets")
        self.assertEqual(base64.b64decode(secret["data"]["control-credential"]).decode(), credential)
        self.assertEqual(base64.b64decode(secret["data"]["booking-key.pem"]).decode(), pem)
        self.assertNotIn("no booking private key", r.notes)

    def test_secrets_generated_or_taken_from_existing_ones(self):
        secret = self.default.get("Secret", "mc-metaclinic-secrets")
        generated = base64.b64decode(secret["data"]["control-credential"]).decode()
        self.assertRegex(generated, r"^[A-Za-z0-9]{40}$")
        self.assertNotIn("booking-key.pem", secret["data"])
        self.assertIn("no booking private key", self.default.notes)
        # The audit chain's key: generated (kept across upgrades), or an existing Secret.
        self.assertRegex(base64.b64decode(secret["data"]["audit-key"]).decode(), r"^[A-Za-z0-9]{64}$")
        self.assertFalse(self.production.all("Secret"))  # all come from existing Secrets
        for r, name in [(self.default, "mc-metaclinic-secrets"), (self.production, "metaclinic-audit")]:
            spec = r.signaling()["spec"]["template"]["spec"]
            vols = {v["name"]: v for v in spec["volumes"]}
            self.assertEqual(vols["audit-key"]["secret"]["secretName"], name)
            e = {x["name"]: x for x in spec["containers"][0]["env"]}
            self.assertEqual(e["METACLINIC_SIGNALING__AUDIT__KEY_FILE"]["value"],
                             "/etc/metaclinic/audit-key/audit-key")
            self.assertEqual(e["METACLINIC_SIGNALING__AUDIT__CHECKPOINT_PATH"]["value"],
                             "/var/lib/metaclinic/audit/$(POD_NAME).checkpoint")
        vols = {v["name"]: v for v in self.production.signaling()["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(vols["booking-key"]["secret"]["secretName"], "metaclinic-booking")
        self.assertEqual(vols["booking-key"]["secret"]["items"],
                         [{"key": "private-key.pem", "path": "booking-key.pem"}])
        self.assertEqual(self.production.toml("signaling")["booking"]["fhir"]["private_key_file"],
                         "/etc/metaclinic/booking/booking-key.pem")

    def test_redis_bundled_or_external(self):
        self.assertFalse(self.default.all("StatefulSet"))
        sts = self.production.get("StatefulSet", "mc-metaclinic-redis")
        self.assertTrue(sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"])
        self.assertIn("redis://mc-metaclinic-redis.clinic.svc:6379/0", self.production.notes)
        external = Rendered({"redis": {"url": "redis://redis.example:6379/0",
                                       "bundled": {"enabled": True}}})
        self.assertFalse(external.all("StatefulSet"))
        self.assertIn("redis://redis.example:6379/0", external.notes)

    def test_monitoring(self):
        self.assertFalse(self.default.all("ServiceMonitor"))
        monitors = {m["metadata"]["name"]: m for m in self.production.all("ServiceMonitor")}
        self.assertEqual(set(monitors), {"mc-metaclinic-signaling", "mc-metaclinic-sfu"})
        self.assertEqual(monitors["mc-metaclinic-sfu"]["spec"]["endpoints"][0]["port"], "control")
        self.assertEqual(monitors["mc-metaclinic-sfu"]["metadata"]["labels"]["release"],
                         "kube-prometheus-stack")
        headless = self.production.get("Service", "mc-metaclinic-sfu")
        self.assertEqual(headless["spec"]["clusterIP"], "None")

    def test_grafana_dashboard_covers_the_metrics(self):
        cm = self.default.get("ConfigMap", "mc-metaclinic-dashboard")
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        dashboard = json.loads(cm["data"]["metaclinic.json"])
        exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
        for family in [
            "metaclinic_sfu_rtp_packets_forwarded_total",
            "metaclinic_sfu_dropped_total",
            "metaclinic_sfu_participants",
            "metaclinic_sfu_rooms",
            "metaclinic_sfu_nacked_packets_total",
            "metaclinic_sfu_retransmissions_total",
            "metaclinic_sfu_nacks_unanswerable_total",
        ]:
            self.assertIn(family, exprs)
        self.assertIn("by (reason)", exprs)
        # Every signaling family the service exports is on the dashboard.
        source = (REPO / "signaling" / "src" / "metrics.rs").read_text()
        families = set(re.findall(r'"(metaclinic_signaling_[a-z_]+)"', source))
        self.assertTrue(families)
        for family in families:
            self.assertIn(family, exprs)

    # -- The image (Dockerfile, scripts/image) ----------------------------------------------

    def test_the_default_image_is_the_one_scripts_image_builds(self):
        # scripts/image names its archive's image <values image.repository>:<workspace version>.
        version = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        self.assertEqual(chart["appVersion"], version, "Chart appVersion follows Cargo.toml")
        self.assertEqual(dockerfile_arg("VERSION"), version, "the Dockerfile's VERSION too")
        defaults = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
        self.assertEqual(defaults["tag"], "")
        self.assertEqual(defaults["digest"], "")
        for w in (self.default.sfu(), self.default.signaling()):
            self.assertEqual(container(w)["image"], f"{defaults['repository']}:{version}")
        script = (REPO / "scripts" / "image").read_text()
        self.assertIn("helm/metaclinic/values.yaml", script)

    def test_image_tag_and_digest(self):
        self.assertEqual(container(self.production.sfu())["image"],
                         "registry.hospital.example/metaclinic/metaclinic:0.1.0")
        digest = "sha256:" + "ab" * 32
        pinned = Rendered(merged(production_values(), {"image": {"digest": digest}}))
        for w in (pinned.sfu(), pinned.signaling()):
            self.assertEqual(container(w)["image"],
                             f"registry.hospital.example/metaclinic/metaclinic@{digest}")

    def test_the_chart_runs_the_image_as_it_is_built(self):
        # The image's entrypoint is `metaclinic`: the chart gives arguments only.
        self.assertEqual(dockerfile_instruction("ENTRYPOINT"), ['["metaclinic"]'])
        for w in (self.default.sfu(), self.default.signaling()):
            self.assertNotIn("command", container(w))
            self.assertIn(container(w)["args"][0], ("sfu", "signaling"))
        # Its user is the pods' user.
        uid, gid = dockerfile_instruction("USER")[0].split(":")
        pod = self.default.sfu()["spec"]["template"]["spec"]["securityContext"]
        self.assertEqual((pod["runAsUser"], pod["runAsGroup"]), (int(uid), int(gid)))
        # The HRTF set is where the chart points spatial.hrtf_path.
        hrtf = next(v.split("=", 1)[1] for v in dockerfile_instruction("ENV")
                    if v.startswith("METACLINIC_SFU__SPATIAL__HRTF_PATH="))
        self.assertEqual(self.default.toml("sfu")["spatial"]["hrtf_path"], hrtf)
        # It exposes the ports the chart opens with default values (media-N past media-0: the
        # next media threads' ports, one per core).
        opened = {f"{p['containerPort']}/{p['protocol'].lower()}"
                  for w in (self.default.sfu(), self.default.signaling())
                  for p in container(w)["ports"] if not re.fullmatch(r"media-[1-9]\d*", p["name"])}
        self.assertEqual(opened, set(dockerfile_instruction("EXPOSE")))


if __name__ == "__main__":
    unittest.main()
