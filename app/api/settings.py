"""Service settings, read from environment variables with the prefix ``ICH_`` (or an env file).

Example: ``ICH_DEVICE=cuda ICH_API_KEYS=sha256:9f86d0...,other-key python -m app serve``.
Sizes are in bytes, durations in seconds. Every field is documented in README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ICH_", env_file=None, extra="ignore")

    # --- model -------------------------------------------------------------------------------------------
    weights_dir: Path = Field(Path("weights"), description="Folder holding registry.json and weight versions")
    weights_version: str | None = Field(None, description="Weights version to serve; default: registry default")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="Mixed precision on CUDA")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile (inductor, freezing) of the model: auto = on CPU when a C++ compiler is "
        "found (1.2-1.7x faster forward passes there; compiled during warm-up, ~10-40 s), off on CUDA")
    retain_cpu_memory: bool = Field(
        True, description="On CPU (glibc), keep freed memory for the next forward pass instead of returning it to "
        "the OS: no page faults on ~1-2 GB of activations per pass (~5 % faster), RSS stays at its peak. Applied "
        "process-wide by `python -m app serve` at start-up, before any thread exists")
    warmup_passes: int = Field(1, ge=0, description="Forward passes on zeros before reporting ready")
    tta_passes: int | None = Field(
        None, ge=0, description="Test-time-augmentation passes per prediction (intervals of the volume and the "
        "expansion probability); unset = on (8) on CUDA, off on CPU, where each pass costs about a whole request")

    # --- server ------------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    docs_enabled: bool = Field(True, description="Serve /docs, /redoc and /openapi.json")
    log_level: str = "INFO"
    shutdown_grace_s: float = Field(30.0, ge=0, description="How long SIGTERM waits for in-flight requests")

    # --- security ----------------------------------------------------------------------------------------
    api_keys: str = Field(
        "", description="Comma-separated API keys or 'sha256:<hex>' hashes of keys; empty = no authentication"
    )

    # --- capacity ----------------------------------------------------------------------------------------
    max_in_flight: int = Field(4, ge=1, description="Prediction requests admitted at once (upload to result)")
    preprocess_threads: int = Field(2, ge=1, description="Threads for DICOM decoding and preprocessing")
    retry_after_s: int = Field(5, ge=1, description="Retry-After header of 503 answers")
    request_timeout_s: float = Field(300.0, gt=0, description="Per-request time limit (upload + processing)")

    # --- upload limits -----------------------------------------------------------------------------------
    max_body_bytes: int = Field(1024**3, gt=0, description="Request body size, counted while streaming")
    max_files: int = Field(5000, ge=1, description="Uploaded parts (files) per request")
    max_archive_members: int = Field(5000, ge=1, description="DICOM instances + archive members in total")
    max_uncompressed_bytes: int = Field(2 * 1024**3, gt=0, description="Total uncompressed bytes of archives")
    max_compression_ratio: float = Field(200.0, gt=1, description="ZIP compression ratio (zip-bomb guard)")
    upload_dir: Path | None = Field(None, description="Where uploads are spooled (default: system temp dir)")

    # --- result store ------------------------------------------------------------------------------------
    result_ttl_s: float = Field(3600.0, gt=0, description="How long results stay retrievable")
    result_max_items: int = Field(200, ge=1, description="Results kept at most")
    result_max_bytes: int = Field(512 * 1024**2, gt=0, description="Bytes of stored results and files at most")
    store_url: str = Field(
        "memory://", description="Result store: memory:// (in this process) or redis://host:port/db (Redis or "
        "Valkey, shared by every replica behind a balancer; rediss:// for TLS)")
    store_timeout_s: float = Field(1.0, gt=0, description="Per-command time limit of the Redis store")
    store_prefix: str = Field("ich:", description="Key prefix in the Redis store (several services, one Redis)")

    # --- asynchronous requests (Prefer: respond-async) ---------------------------------------------------
    job_poll_after_s: int = Field(1, ge=1, description="Retry-After of 202 answers: when to poll a job again")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="How often a replica refreshes its heartbeat")
    heartbeat_timeout_s: float = Field(
        10.0, gt=0, description="A queued or running job whose replica has not beaten for this long is failed "
        "(503 job_lost)")

    # --- DICOM network (app/dicom_network) ---------------------------------------------------------------
    dicom_port: int | None = Field(None, ge=0, le=65535, description="Port of the DICOM listener (C-ECHO, CT "
                                   "C-STORE); unset: no listener")
    dicom_host: str | None = Field(None, description="Bind address of the DICOM listener (default: ICH_HOST)")
    dicom_ae_title: str = Field("ICHEXPANSION", min_length=1, max_length=16, description="The listener's AE title")
    dicom_allowed_calling_aets: str = Field("", description="Comma-separated calling AE titles allowed to "
                                            "associate; empty: any (logged at start-up)")
    series_stable_s: float = Field(10.0, gt=0, description="A received series is analysed once no instance has "
                                   "arrived for this long")
    dicom_work_dir: Path = Field(Path("dicom-work"), description="Spool of received series and outbox of results "
                                 "(kept across restarts)")
    dicom_max_association_bytes: int = Field(2 * 1024**3, gt=0, description="Bytes received per association")
    dicom_max_association_instances: int = Field(5000, ge=1, description="Instances received per association")
    dicom_max_series_per_study: int = Field(20, ge=1, description="Series of one study spooled at once")
    dicom_max_associations: int = Field(8, ge=1, description="Simultaneous associations")
    dicom_destinations: str = Field("", description="Comma-separated result destinations: AET@host:port "
                                    "(C-STORE) or http(s):// DICOMweb base URLs (STOW-RS)")
    dicom_retry_base_s: float = Field(2.0, gt=0, description="First retry delay of a failed send (doubles)")
    dicom_retry_max_s: float = Field(300.0, gt=0, description="Longest retry delay of a failed send")
    dicom_retry_max_attempts: int = Field(20, ge=1, description="Attempts before a send is given up (kept in "
                                          "the outbox's failed folder)")
    dicom_send_timeout_s: float = Field(60.0, gt=0, description="Network timeout of one send")
    # --- comparisons -------------------------------------------------------------------------------------
    identity_key: str = Field(
        "", description="Key of the patient-identity hash (HMAC-SHA256) kept with each prediction for POST "
        "/v1/comparisons; set the same value on every replica that shares a result store. Empty = a random key "
        "per process")

    def api_key_entries(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]
