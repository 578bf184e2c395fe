"""Nipype interfaces over :mod:`asl_pipeline.cbf`: M0, single-PLD CBF, multi-PLD fit.

Each interface loads the images and the BIDS sidecar, calls the core functions
and writes NIfTI outputs (float32, never NaN/inf) with a JSON sidecar that
records the units and every parameter used.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from asl_pipeline import cbf as core
from asl_pipeline import drift, kinetics
from asl_pipeline import outliers as cleaning
from asl_pipeline.bids import read_json_sidecar
from asl_pipeline.derivatives import sidecar_text
from asl_pipeline.errors import ASLInputError
from asl_pipeline.multipld import (
    ATT_ESTIMATES,
    SMOOTHED_ATT_FWHM,
    T1_MAX_SE,
    T1_TISSUE_SOURCES,
    att_estimate_for,
    fit_smoothed_att,
    gm_curve_t1,
)
from asl_pipeline.rundesc import RunDescription, describe_metadata, read_aslcontext

LOGGER = logging.getLogger("nipype.interface")

CBF_UNITS = "mL/100 g/min"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _sidecar_of(path: str) -> str:
    p = str(path)
    for ext in (".nii.gz", ".nii"):
        if p.endswith(ext):
            return p[: -len(ext)] + ".json"
    return p + ".json"


def _load_metadata(value, fallback_source: str | None) -> tuple[dict, str | None]:
    """A sidecar given as a dict or a JSON file, and the path to name in errors."""
    if isinstance(value, dict):
        return value, fallback_source
    return read_json_sidecar(value), str(value)


def run_description(inputs, n_slices: int | None = None) -> RunDescription:
    """The run description of a node: given as such, or made from a sidecar.

    The workflow passes ``run_description`` (built by the BIDS reader); an
    interface used on its own may be given ``metadata`` and ``aslcontext``
    instead, read by the same section parsers (:mod:`asl_pipeline.rundesc`).
    """
    if isdefined(inputs.run_description):
        return RunDescription.from_dict(inputs.run_description)
    if not isdefined(inputs.aslcontext):
        raise ASLInputError(
            "the volume types are unknown: neither run_description nor aslcontext is set.",
            field="aslcontext",
            fix="connect the aslcontext.tsv of the series (or the run description).",
        )
    types = read_aslcontext(inputs.aslcontext)
    meta, src = _load_metadata(inputs.metadata, _sidecar_of(inputs.asl_file))
    m0_meta, m0_src = (None, None)
    if isdefined(inputs.m0_metadata):
        m0_fallback = _sidecar_of(inputs.m0_file) if isdefined(inputs.m0_file) else None
        m0_meta, m0_src = _load_metadata(inputs.m0_metadata, m0_fallback)
    found: list[str] = []
    desc = describe_metadata(
        meta,
        types,
        n_slices=n_slices,
        m0_metadata=m0_meta,
        sidecar=src,
        m0_sidecar=m0_src,
        aslcontext=inputs.aslcontext,
        warnings=found,
    )
    for message in found:
        LOGGER.warning("%s: %s", src or "metadata", message)
    return desc


def _image(path, *, ndim: tuple[int, ...], what: str) -> tuple[nb.Nifti1Image, np.ndarray]:
    img = nb.load(path)
    data = np.asanyarray(img.dataobj).astype(float)
    if data.ndim == 4 and 3 in ndim and 4 not in ndim and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in ndim:
        raise ASLInputError(
            f"the {what} must be {' or '.join(f'{n}D' for n in ndim)}, got {data.shape}.",
            file=path,
            fix=f"give a {ndim[0]}D image.",
        )
    return img, data


def _same_grid(shape, other_shape, path, what):
    if tuple(other_shape[:3]) != tuple(shape[:3]):
        raise ASLInputError(
            f"the {what} has shape {other_shape[:3]} but the ASL series {shape[:3]}.",
            file=path,
            fix=f"resample the {what} to the ASL grid.",
        )


def _map_on_grid(path, shape, what: str) -> np.ndarray:
    """A 3D map (tissue probability) read from ``path``, refused off the ``shape`` grid."""
    _, data = _image(path, ndim=(3,), what=what)
    _same_grid(shape, data.shape, path, what)
    return data


def _save(data, ref_img, in_file, suffix, newpath, meta: dict) -> tuple[str, str]:
    """Write ``data`` as float32 NIfTI on ``ref_img``'s grid, and its JSON sidecar."""
    base = _stem(in_file)
    if base.endswith("_asl"):
        base = base[: -len("_asl")]
    out = fname_presuffix(f"{base}{suffix}.nii.gz", newpath=newpath)
    arr = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    hdr = ref_img.header.copy()
    hdr.set_data_dtype(np.float32)
    img = nb.Nifti1Image(arr, ref_img.affine, hdr)
    img.header.set_slope_inter(1.0, 0.0)
    img.to_filename(out)
    sidecar = _sidecar_of(out)
    Path(sidecar).write_text(sidecar_text(meta))
    return out, sidecar


def _stem(path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


class _Loaded:
    """Series, context, parameters, mask: what every interface here starts from."""

    def __init__(self, inputs):
        self.img, self.series = _image(inputs.asl_file, ndim=(4,), what="ASL series")
        self.desc = run_description(inputs, n_slices=self.series.shape[2])
        self.vtypes = self.desc.volume_types
        #: the constants given instead of the defaults (``quant_overrides``)
        self.overrides = dict(inputs.quant_overrides) if isdefined(inputs.quant_overrides) else {}
        self.params = core.quant_params(self.desc, **self.overrides)
        self.mask = None
        #: ``GainDriftCorrection`` for the sidecars, once :meth:`deltam` removed a drift
        self.drift_meta: dict = {}
        if isdefined(inputs.mask):
            _, mask = _image(inputs.mask, ndim=(3,), what="brain mask")
            _same_grid(self.series.shape, mask.shape, inputs.mask, "brain mask")
            self.mask = mask > 0

    def deltam(self, inputs, method="pairwise"):
        """The differences, after the gain drift's removal when ``drift_correction``
        asks for it (:attr:`drift_meta` then describes it for the sidecars)."""
        series = self.series
        if inputs.drift_correction == "trend":
            trend = drift.gain_trend(
                series, self.vtypes, mask=self.mask, plds=self.params.pld,
                m0_volumes=self.desc.m0.m0_volumes,  # empty unless M0Type is Included
                source=self.desc.aslcontext,
            )  # fmt: skip
            series = drift.remove_gain_drift(series, trend)
            self.drift_meta = {"GainDriftCorrection": trend.to_dict()}
            LOGGER.info(
                "gain drift: %+.2f%% from the first to the last control/label volume "
                "(%d pairs fitted)",
                100 * trend.change,
                trend.fitted.sum(),
            )
        return core.deltam_series(
            series,
            self.vtypes,
            method=method,
            plds=self.params.pld,
            source=self.desc.aslcontext,
        )

    def m0(self, inputs, *, dm=None, method=None):
        """The final M0: ``m0_file`` as given, else computed for the M0Type."""
        if method != core.PAIRWISE_CONTROL and isdefined(inputs.m0_file):
            _, m0 = _image(inputs.m0_file, ndim=(3, 4), what="M0 image")
            _same_grid(self.series.shape, m0.shape, inputs.m0_file, "M0 image")
            if m0.ndim == 4:
                m0 = m0.mean(axis=3)
            return m0, {"M0File": str(inputs.m0_file), "M0Method": "given"}
        m0 = core.compute_m0(
            self.params,
            series=self.series,
            volume_types=self.vtypes,
            control=None if dm is None else dm.control,
            method=method,
            m0_scale=inputs.m0_scale,
            source=inputs.asl_file,
        )
        tr = self.params.tr if method == core.PAIRWISE_CONTROL else self.params.m0_tr
        return m0, {
            "M0Method": method or self.params.m0_type,
            "M0Scale": inputs.m0_scale,
            "M0RecoveryFactor": core.m0_recovery_factor(tr, self.params.t1_tissue),
        }


_METADATA_DESC = (
    "BIDS _asl.json sidecar, as a dictionary or a JSON file (with aslcontext; instead of "
    "run_description, for use outside the pipeline)"
)
_M0_META_DESC = (
    "sidecar of the separate M0 scan (dict or JSON file), for its RepetitionTimePreparation "
    "(with metadata only)"
)
_DESCRIPTION_DESC = (
    "the run description built by the BIDS reader (asl_pipeline.rundesc.RunDescription."
    "to_dict()): volume types, pairs, delays, labeling, M0 source, readout; nothing is "
    "parsed again"
)
_ASLCONTEXT_DESC = "BIDS aslcontext.tsv of the series (with metadata only)"


def _drift_trait():
    return traits.Enum(
        *drift.METHODS,
        usedefault=True,
        desc="'trend': divide each control and label volume by a smooth trend of the "
        "brain-wide gain, fitted to the pair means (asl_pipeline.drift), before "
        "subtraction; a gain drift would otherwise add the same offset to every pair",
    )


class _RunInputSpec(BaseInterfaceInputSpec):
    """What the run is: its description, or (used alone) a sidecar and its aslcontext."""

    run_description = traits.Dict(mandatory=True, xor=["metadata"], desc=_DESCRIPTION_DESC)
    metadata = traits.Either(
        traits.Dict,
        File(exists=True),
        mandatory=True,
        xor=["run_description"],
        desc=_METADATA_DESC,
    )
    aslcontext = File(exists=True, desc=_ASLCONTEXT_DESC)
    m0_metadata = traits.Either(traits.Dict, File(exists=True), desc=_M0_META_DESC)
    quant_overrides = traits.Dict(
        traits.Str,
        traits.Float,
        desc="quantification constants that replace the defaults (and the sidecar's "
        "LabelingEfficiency), by asl_pipeline.cbf.QuantParams field: t1b (s), lam (mL/g), "
        "labeling_efficiency, ...; recorded in the sidecars as QuantificationOverrides",
    )


# --------------------------------------------------------------------------------------
# ComputeM0
# --------------------------------------------------------------------------------------


class _ComputeM0InputSpec(_RunInputSpec):
    asl_file = File(exists=True, mandatory=True, desc="motion-corrected 4D ASL series")
    m0_file = File(
        exists=True, desc="separate M0 image (M0Type Separate), on the ASL grid, 3D or 4D"
    )
    mask = File(exists=True, desc="brain mask on the ASL grid (reported statistics only)")
    m0_scale = traits.Float(1.0, usedefault=True, desc="multiplier applied to the M0")
    gm = File(exists=True, desc="GM partial-volume map on the ASL grid (tissue-weighted recovery)")
    wm = File(exists=True, desc="WM partial-volume map on the ASL grid (tissue-weighted recovery)")
    csf = File(
        exists=True, desc="CSF partial-volume map on the ASL grid (tissue-weighted recovery)"
    )
    recovery = traits.Enum(
        "tissue",
        "single",
        usedefault=True,
        desc="incomplete-recovery correction: tissue (each voxel's T1 mix from gm/wm/csf, at "
        "any known TR; needs the three maps, else single) or single (one tissue T1, none "
        "from 5 s on: the methods spec's)",
    )


class _ComputeM0OutputSpec(TraitedSpec):
    m0_file = File(exists=True, desc="M0 image, scaled and corrected for incomplete recovery")
    m0_json = File(exists=True, desc="JSON sidecar of m0_file with the parameters used")


class ComputeM0(SimpleInterface):
    """Build the M0 image for the sidecar's ``M0Type``.

    Separate: mean of ``m0_file``; Included: mean of the ``m0scan`` volumes;
    Estimate: ``M0Estimate`` everywhere; Absent: mean control image (refused
    with background suppression). Then ``m0_scale`` and, when the TR is known
    and < 5 s, ``M0 / (1 - exp(-TR/T1tissue))``.
    """

    input_spec = _ComputeM0InputSpec
    output_spec = _ComputeM0OutputSpec

    def _run_interface(self, runtime):
        inp = _Loaded(self.inputs)
        m0_vols = None
        if isdefined(self.inputs.m0_file):
            _, m0_vols = _image(self.inputs.m0_file, ndim=(3, 4), what="M0 image")
            _same_grid(inp.series.shape, m0_vols.shape, self.inputs.m0_file, "M0 image")
        fractions = self._fractions(inp.series.shape)
        m0 = core.compute_m0(
            inp.params,
            m0_volumes=m0_vols,
            series=inp.series,
            volume_types=inp.vtypes,
            m0_scale=self.inputs.m0_scale,
            source=self.inputs.m0_file if m0_vols is not None else self.inputs.asl_file,
            tissue_fractions=fractions,
        )
        if not np.all(np.isfinite(m0)):
            LOGGER.warning("non-finite M0 voxels set to 0")
            m0 = np.nan_to_num(m0, nan=0.0, posinf=0.0, neginf=0.0)
        meta = {
            "M0Type": inp.params.m0_type,
            "M0Scale": self.inputs.m0_scale,
            "RepetitionTimePreparation": inp.params.m0_tr,
            "T1Tissue": inp.params.t1_tissue,
            "M0RecoveryCorrection": "single T1" if fractions is None else "tissue-weighted",
            "M0RecoveryFactor": core.m0_recovery_factor(
                None if inp.params.m0_type == "Estimate" else inp.params.m0_tr,
                inp.params.t1_tissue,
            ),
            "Sources": [str(self.inputs.asl_file)]
            + ([str(self.inputs.m0_file)] if m0_vols is not None else []),
        }
        if fractions is not None:
            meta["T1ByTissue"] = kinetics.t1_by_tissue(inp.params.field_strength)
            meta["ProtonDensityByTissue"] = dict(kinetics.PROTON_DENSITY)
        if inp.mask is not None:
            meta["MeanM0InMask"] = float(m0[inp.mask].mean())
        out, js = _save(m0, inp.img, self.inputs.asl_file, "_desc-quant_m0scan", runtime.cwd, meta)
        self._results["m0_file"], self._results["m0_json"] = out, js
        return runtime

    def _fractions(self, shape) -> dict | None:
        """The tissue maps for a tissue-weighted correction, or None."""
        names = ("gm", "wm", "csf")
        if self.inputs.recovery != "tissue" or not all(
            isdefined(getattr(self.inputs, n)) for n in names
        ):
            return None
        return {
            name: _map_on_grid(getattr(self.inputs, name), shape, f"{name.upper()} map")
            for name in names
        }


# --------------------------------------------------------------------------------------
# ComputeCBF (single PLD)
# --------------------------------------------------------------------------------------


class _ComputeCBFInputSpec(_RunInputSpec):
    asl_file = File(exists=True, mandatory=True, desc="motion-corrected 4D ASL series")
    m0_file = File(
        exists=True,
        desc="final M0 on the ASL grid (ComputeM0's output), used as is; without it the M0 "
        "is computed from the series for M0Type Included/Estimate/Absent",
    )
    mask = File(exists=True, desc="brain mask on the ASL grid; CBF is 0 outside it")
    quantification = traits.Enum(
        "white-paper",
        core.PAIRWISE_CONTROL,
        usedefault=True,
        desc="'white-paper': one M0 image; 'pairwise-control': ASLtbx, M0 = each pair's "
        "control image voxel by voxel (refused with background suppression)",
    )
    subtraction = traits.Enum(
        "pairwise", "surround", usedefault=True, desc="control - label subtraction scheme"
    )
    drift_correction = _drift_trait()
    m0_scale = traits.Float(
        1.0, usedefault=True, desc="multiplier of the M0 when it is computed here"
    )
    m0_fraction = traits.Float(
        core.M0_FRACTION_DEFAULT,
        usedefault=True,
        desc="voxels with M0 below this fraction of the brain-mean M0 get CBF 0",
    )


class _ComputeCBFOutputSpec(TraitedSpec):
    cbf_ts = File(exists=True, desc="4D CBF, one volume per difference, mL/100 g/min")
    mean_cbf = File(exists=True, desc="mean CBF over the differences, mL/100 g/min")
    deltam = File(exists=True, desc="4D control - label differences")
    excluded_mask = File(exists=True, desc="voxels not quantified (low M0, non-finite data)")
    cbf_ts_json = File(exists=True, desc="JSON sidecar of cbf_ts")
    mean_cbf_json = File(exists=True, desc="JSON sidecar of mean_cbf")
    deltam_json = File(exists=True, desc="JSON sidecar of deltam")


class ComputeCBF(SimpleInterface):
    """Single-PLD CBF (ASL white paper; QUIPSS II / Q2TIPS for PASL)."""

    input_spec = _ComputeCBFInputSpec
    output_spec = _ComputeCBFOutputSpec

    def _run_interface(self, runtime):
        inp = _Loaded(self.inputs)
        dm = inp.deltam(self.inputs, self.inputs.subtraction)
        if dm.plds is not None and np.unique(dm.plds).size > 1:
            raise ASLInputError(
                f"several PLDs ({np.unique(dm.plds).tolist()}): this is multi-PLD data.",
                file=inp.params.source,
                field="PostLabelingDelay",
                fix="use ComputeMultiPLDCBF.",
            )
        params = inp.params.to_dict()
        base = {"Sources": [str(self.inputs.asl_file)], "QuantificationParameters": params}
        if inp.overrides:
            base["QuantificationOverrides"] = inp.overrides
        if dm.kind == "cbf":
            cbf_ts = dm.deltam
            res = core.CBFResult(cbf_ts, cbf_ts.mean(axis=3), np.zeros(cbf_ts.shape[:3], bool))
            extra = {"Quantification": "passed through (the series holds cbf volumes)"}
        else:
            method = (
                core.PAIRWISE_CONTROL
                if self.inputs.quantification == core.PAIRWISE_CONTROL
                else None
            )
            m0, extra = inp.m0(self.inputs, dm=dm, method=method)
            res = core.cbf_single_pld(
                dm.deltam,
                m0,
                inp.params,
                plds=dm.plds,
                mask=inp.mask,
                m0_fraction=self.inputs.m0_fraction,
            )
            extra.update(
                Quantification=self.inputs.quantification,
                Subtraction=self.inputs.subtraction,
                **inp.drift_meta,
                M0Fraction=self.inputs.m0_fraction,
                ExcludedVoxels=int(res.excluded.sum()),
            )
        cbf_meta = {**base, "Units": CBF_UNITS, **extra}
        if dm.plds is not None:
            cbf_meta["PostLabelingDelay"] = dm.plds.tolist()
        cwd, src = runtime.cwd, self.inputs.asl_file
        r = self._results
        r["cbf_ts"], r["cbf_ts_json"] = _save(
            res.cbf_ts, inp.img, src, "_desc-timeseries_cbf", cwd, cbf_meta
        )
        r["mean_cbf"], r["mean_cbf_json"] = _save(
            res.mean_cbf, inp.img, src, "_desc-mean_cbf", cwd, cbf_meta
        )
        r["deltam"], r["deltam_json"] = _save(
            dm.deltam, inp.img, src, "_deltam", cwd, {**base, "Units": "arbitrary"}
        )
        r["excluded_mask"], _ = _save(
            res.excluded.astype(np.uint8), inp.img, src, "_desc-excluded_mask", cwd, base
        )
        return runtime


# --------------------------------------------------------------------------------------
# ComputeMultiPLDCBF
# --------------------------------------------------------------------------------------


_KINETIC_MODEL = {
    "tissue": "Buxton general kinetic model (Buxton et al. 1998), single compartment: blood "
    "T1 during transit, apparent tissue T1 (1/T1app = 1/T1Tissue + f/lambda) after arrival",
    "blood": "Buxton general kinetic model (Buxton et al. 1998), single compartment, blood T1 "
    "throughout (the ASL white paper's simplification)",
}


class _ComputeMultiPLDCBFInputSpec(_RunInputSpec):
    asl_file = File(exists=True, mandatory=True, desc="motion-corrected 4D ASL series")
    m0_file = File(
        exists=True,
        desc="final M0 on the ASL grid (ComputeM0's output), used as is; without it the M0 "
        "is computed from the series for M0Type Included/Estimate/Absent",
    )
    mask = File(exists=True, desc="brain mask on the ASL grid; only these voxels are fitted")
    m0_scale = traits.Float(
        1.0, usedefault=True, desc="multiplier of the M0 when it is computed here"
    )
    m0_fraction = traits.Float(
        core.M0_FRACTION_DEFAULT,
        usedefault=True,
        desc="voxels with M0 below this fraction of the brain-mean M0 are not fitted",
    )
    att_bounds = traits.Tuple(
        (0.1, 3.0), traits.Float, traits.Float, usedefault=True, desc="ATT bounds (s)"
    )
    cbf_bounds = traits.Tuple(
        (0.0, 500.0),
        traits.Float,
        traits.Float,
        usedefault=True,
        desc="CBF bounds (mL/100 g/min)",
    )
    t1_after_arrival = traits.Enum(
        *kinetics.T1_AFTER_ARRIVAL,
        usedefault=True,
        desc="T1 of the label once it has reached the tissue: 'tissue', the apparent tissue "
        "T1 1/T1app = 1/T1tissue + f/lambda (Buxton et al. 1998; T1tissue by field "
        "strength, 1.4 s at 3 T), or 'blood', blood T1 throughout (the white paper's "
        "simplification, which reads CBF lower on the same data)",
    )
    t1_tissue = traits.Float(
        desc="tissue T1 (s) of the kinetic model with t1_after_arrival='tissue', used as "
        "given (overrides t1_tissue_source); the fitted CBF depends on it (GM data made "
        "with 1.6 s read 11-17% high with 1.4 s)",
    )
    t1_tissue_source = traits.Enum(
        *T1_TISSUE_SOURCES,
        usedefault=True,
        desc="where the tissue T1 comes from when t1_tissue is not given: 'gm-curve', "
        "fitted with CBF and ATT to the mean curve of the GM voxels (gm > 0.8; needs gm, "
        "asl_pipeline.multipld.gm_curve_t1; the fixed T1 where that fit fails or its "
        f"jackknife standard error over the repeats exceeds {T1_MAX_SE:g} s), or "
        "'fixed', by field strength (1.4 s at 3 T)",
    )
    gm = File(exists=True, desc="GM probability map on the ASL grid (the GM mean curve)")
    att_estimate = traits.Enum(
        *ATT_ESTIMATES,
        usedefault=True,
        desc="how the ATT is estimated: 'voxel', each voxel's own fit of CBF and ATT; "
        "'smoothed', the ATT fitted to the curves smoothed inside the mask (FWHM 2 voxels) "
        "and each voxel's CBF at it (asl_pipeline.multipld.fit_smoothed_att); 'auto' "
        "(default), smoothed for every labeling (the voxel-wise fit reads WM CBF too high "
        "at WM's SNR: PASL 64-123%, pCASL up to 64%)",
    )
    drift_correction = _drift_trait()

    screen_repeats = traits.Bool(
        True,
        usedefault=True,
        desc="drop the slices of repeats that disagree with the other repeats of their delay "
        "before averaging (asl_pipeline.outliers.screen_repeats); False averages all repeats",
    )


class _ComputeMultiPLDCBFOutputSpec(TraitedSpec):
    cbf = File(exists=True, desc="CBF, mL/100 g/min")
    att = File(exists=True, desc="arterial transit time, s")
    failed_mask = File(exists=True, desc="voxels whose fit failed or was not done")
    cbf_json = File(exists=True, desc="JSON sidecar of cbf")
    att_json = File(exists=True, desc="JSON sidecar of att")


#: The sidecar's and the log's words for each ATT estimate.
_ATT_ESTIMATE_TEXT = {
    "voxel": "CBF and ATT fitted to each voxel's own curve",
    "smoothed": "ATT fitted to the curves smoothed inside the brain mask, each voxel's CBF "
    "fitted to its own curve at that ATT",
}


class ComputeMultiPLDCBF(SimpleInterface):
    """CBF and arterial transit time from multi-PLD / multi-TI data (Buxton model)."""

    input_spec = _ComputeMultiPLDCBFInputSpec
    output_spec = _ComputeMultiPLDCBFOutputSpec

    def _run_interface(self, runtime):
        inp = _Loaded(self.inputs)
        dm = inp.deltam(self.inputs)
        if dm.kind != "deltam":
            raise ASLInputError(
                "the series holds cbf volumes: nothing to fit.",
                file=inp.desc.aslcontext,
                field="volume_type",
            )
        m0, extra = inp.m0(self.inputs, dm=dm)
        params = inp.params
        keep, screen_meta = None, {}
        mask = inp.mask if inp.mask is not None else np.ones(dm.deltam.shape[:3], bool)
        if self.inputs.screen_repeats:
            screen = cleaning.screen_repeats(dm.deltam, dm.plds, mask)
            keep = screen.keep
            dropped = int((~keep).sum())
            screen_meta = {
                "RepeatScreen": {
                    "Description": "slices of repeats that disagreed with the other repeats "
                    "of their delay (RMS deviation from their voxel-wise median) were left "
                    "out of that delay's mean",
                    "Thresholds": [round(t, 4) for t in screen.thresholds],
                    "ScreenedDelays": screen.groups,
                    "DroppedSlices": dropped,
                    "SlicesPerVolume": int(keep.shape[0]),
                }
            }
            LOGGER.info(
                "multi-PLD repeat screen: %d of %d volume slices dropped (%d delays screened)",
                dropped,
                keep.size,
                screen.groups,
            )
        params, t1_meta = self._tissue_t1(params, dm, m0, mask, keep)
        estimate = att_estimate_for(self.inputs.att_estimate)
        fit = fit_smoothed_att if estimate == "smoothed" else core.fit_multi_pld
        cbf, att, failed = fit(
            dm.deltam,
            dm.plds,
            m0,
            params,
            mask=inp.mask,
            att_bounds=tuple(self.inputs.att_bounds),
            cbf_bounds=tuple(self.inputs.cbf_bounds),
            m0_fraction=self.inputs.m0_fraction,
            t1_after_arrival=self.inputs.t1_after_arrival,
            keep=keep,
        )
        LOGGER.info("multi-PLD ATT estimate: %s", _ATT_ESTIMATE_TEXT[estimate])
        meta = {
            "Sources": [str(self.inputs.asl_file)],
            "QuantificationParameters": params.to_dict(),
            **({"QuantificationOverrides": inp.overrides} if inp.overrides else {}),
            "Model": _KINETIC_MODEL[self.inputs.t1_after_arrival],
            "T1AfterArrival": self.inputs.t1_after_arrival,
            "T1Blood": params.t1b,
            "T1Tissue": params.t1_tissue,
            **t1_meta,
            "PostLabelingDelay": dm.plds.tolist(),
            "ATTEstimate": {
                "Method": estimate,
                "Description": _ATT_ESTIMATE_TEXT[estimate],
                **({"SmoothingFWHMVoxels": SMOOTHED_ATT_FWHM} if estimate == "smoothed" else {}),
            },
            "ATTBounds": list(self.inputs.att_bounds),
            "CBFBounds": list(self.inputs.cbf_bounds),
            "M0Fraction": self.inputs.m0_fraction,
            "FailedVoxels": int(failed.sum()),
            **screen_meta,
            **inp.drift_meta,
            **extra,
        }
        cwd, src, r = runtime.cwd, self.inputs.asl_file, self._results
        r["cbf"], r["cbf_json"] = _save(
            cbf, inp.img, src, "_cbf", cwd, {**meta, "Units": CBF_UNITS}
        )
        r["att"], r["att_json"] = _save(att, inp.img, src, "_att", cwd, {**meta, "Units": "s"})
        r["failed_mask"], _ = _save(
            failed.astype(np.uint8), inp.img, src, "_desc-failed_mask", cwd, meta
        )
        return runtime

    def _tissue_t1(self, params, dm, m0, mask, keep):
        """The run's tissue T1 (:attr:`t1_tissue`, the GM mean curve's, or fixed)."""
        inputs = self.inputs
        if isdefined(inputs.t1_tissue):
            return replace(params, t1_tissue=inputs.t1_tissue), {"T1TissueSource": "given"}
        if inputs.t1_after_arrival != "tissue":
            return params, {}
        if inputs.t1_tissue_source == "fixed":
            return params, {"T1TissueSource": "fixed (by field strength)"}
        if not isdefined(inputs.gm):
            LOGGER.warning("no GM map: the multi-PLD fit keeps the fixed tissue T1")
            return params, {"T1TissueSource": "fixed (no GM map)"}
        gm = _map_on_grid(inputs.gm, dm.deltam.shape[:3], "GM map")
        t1, kin = gm_curve_t1(dm.deltam, dm.plds, m0, params, gm, mask, keep=keep)
        se = kin.t1_se.get("gm")
        if kin.t1_trusted("gm"):
            source = "GM mean curve"
        elif kin.t1_fitted["gm"]:
            source = (
                f"fixed (the GM mean curve's T1, {kin.t1_tissue['gm']:.2f} s, has a jackknife "
                f"standard error of {se:.2f} s, above {T1_MAX_SE} s)"
            )
            LOGGER.warning("multi-PLD tissue T1: %s", source)
        else:
            source = "fixed (the GM mean curve gave none)"
        LOGGER.info("multi-PLD tissue T1: %.3f s (%s)", t1, source)
        curve = {
            "Description": "one CBF, ATT and tissue T1 fitted to the mean ΔM/M0 curve of the "
            "GM voxels (GM probability above 0.8, M0 above half the brain mean), which set "
            "the tissue T1 of every voxel's fit; not the CBF map's regional values",
            **kin.to_dict()["GM"],
        }
        return replace(params, t1_tissue=t1), {"T1TissueSource": source, "GMCurve": curve}
