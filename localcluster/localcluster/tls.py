"""The cluster's PKI: a CA made at start-up and the API server's serving certificate, signed by it.

Made with `cryptography` (ECDSA P-256, as kubeadm can), written under `<workdir>/pki/` (keys 0600).
The kubeconfig carries the CA (`certificate-authority-data`), every pod finds it as `ca.crt` in its
ServiceAccount folder, and each namespace gets the `kube-root-ca.crt` ConfigMap, as on a real cluster.
`server_context` is the HTTPS side; `client_context` is how our own callers (the CLI, tests,
benchmarks, webhook calls) trust a CA bundle.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import pathlib
import ssl
from dataclasses import dataclass

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
"""The ConfigMap every namespace gets, holding the cluster CA under `ca.crt`."""
API_SERVER_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
"""DNS names of the serving certificate besides the address it listens on."""
_VALIDITY = datetime.timedelta(days=365)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True, slots=True)
class ServingCert:
    """A leaf certificate and its key, PEM."""

    cert_pem: bytes
    """The certificate."""
    key_pem: bytes
    """Its private key (PKCS#8, unencrypted)."""


class ClusterCA:
    """A self-signed CA that issues serving certificates."""

    def __init__(self, common_name: str = "localcluster-ca") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._name = name
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)
        """The CA certificate, PEM: what clients trust."""

    def issue(self, common_name: str, hosts: tuple[str, ...]) -> ServingCert:
        """A serving certificate for `hosts` (IP addresses or DNS names)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_san(hosts), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return ServingCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True, slots=True)
class ClusterPki:
    """The files of one cluster's PKI."""

    ca_pem: bytes
    """The CA certificate."""
    ca_path: pathlib.Path
    """`pki/ca.crt`."""
    cert_path: pathlib.Path
    """`pki/apiserver.crt`."""
    key_path: pathlib.Path
    """`pki/apiserver.key` (0600)."""

    def server_context(self) -> ssl.SSLContext:
        """The API server's TLS context (TLS 1.2 or later)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def make_pki(folder: pathlib.Path, host: str) -> ClusterPki:
    """A fresh CA and API server certificate for `host`, written to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca = ClusterCA()
    serving = ca.issue("kube-apiserver", (host, "127.0.0.1", *API_SERVER_NAMES))
    ca_path, cert_path, key_path = folder / "ca.crt", folder / "apiserver.crt", folder / "apiserver.key"
    ca_path.write_bytes(ca.cert_pem)
    cert_path.write_bytes(serving.cert_pem + ca.cert_pem)
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)
    key_path.write_bytes(serving.key_pem)
    return ClusterPki(ca.cert_pem, ca_path, cert_path, key_path)


def client_context(ca_pem: bytes | str) -> ssl.SSLContext:
    """A client TLS context that trusts exactly `ca_pem` (a PEM bundle) and checks host names."""
    text = ca_pem.decode() if isinstance(ca_pem, bytes) else ca_pem
    return ssl.create_default_context(cadata=text)


def kubeconfig_context(kubeconfig: str | pathlib.Path) -> ssl.SSLContext:
    """The client TLS context a kubeconfig's first cluster asks for (its CA data or file)."""
    config = yaml.safe_load(pathlib.Path(kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    if cluster.get("certificate-authority-data"):
        return client_context(base64.b64decode(cluster["certificate-authority-data"]))
    return client_context(pathlib.Path(cluster["certificate-authority"]).read_bytes())
