"""The text of a calibration fragment (written atomically by ``results.store.atomic_text``,
so that a killed calibration never leaves half a fragment behind)."""
from __future__ import annotations

import yaml


def fragment_text(compute: dict, network: dict, fit: dict, insitu: dict | None = None) -> str:
    """The ``compute:`` / ``network:`` fragment, the goodness of fit as comments on top."""
    c, n = fit["compute"], fit["network"]
    head = [f"# Calibrated by harness calibrate from {fit['source']} ({fit['backend']}, {fit['ranks']} ranks, "
            f"hosts {', '.join(sorted(set(fit['hosts'])))}).",
            f"# compute: {c['samples']} step times; {fit['fragment']['compute']['model']} chosen by AIC {c['aic']};",
            f"#   Kolmogorov-Smirnov distance {c['ks_distance']:.3f} (p = {c['ks_pvalue']:.2g}); "
            f"per-worker medians (s) {[round(v, 6) for v in c['worker_median_s']]}",
            f"# network: {n['measurements']} op times; allreduce {network['allreduce']} chosen by relative RMS "
            f"{ {k: round(v, 3) for k, v in n['rel_rms_by_allreduce'].items()} };",
            f"#   relative RMS by op { {k: round(v, 3) for k, v in n['rel_rms_by_op'].items()} }, "
            f"worst {n['max_abs_rel_error']:.2f}",
            *([f"# in situ: sync_delay_s {insitu['sync_delay_s'] * 1e3:.3f} ms per communication op: measured step {insitu['measured_step_s'] * 1e3:.3f} ms = "
               f"E[max compute] {insitu['expected_max_compute_s'] * 1e3:.3f} ms (measured "
               f"{insitu.get('measured_max_compute_s', insitu['expected_max_compute_s']) * 1e3:.3f} ms) + all-reduce "
               f"{insitu['allreduce_model_s'] * 1e3:.3f} ms (model) + delay"] if insitu else []),
            "# Use: copy these sections into a config, or harness predict RUNS --calibration THIS_FILE."]
    return "\n".join(head) + "\n" + yaml.safe_dump({"compute": compute, "network": network}, sort_keys=False)
