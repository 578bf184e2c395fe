"""Spatial stage: ASL-aware head-motion correction, anatomy, registration, resampling.

Every sub-workflow has one ``inputnode`` / ``outputnode`` contract shared by
the two backends:

* ``backend="embedded"`` (default): :mod:`asl_pipeline.motion` (own
  Gauss-Newton realignment) and antspyx (registration, N4, Atropos);
* ``backend="spm"``: nipype's SPM12 interfaces (Realign, Coregister,
  NewSegment, Normalize12 / Reslice) for the estimation; the ASL-specific
  zig-zag removal, the single reslice and the output formats stay the same
  (:mod:`asl_pipeline.interfaces.spm`). ``spm_cmd`` is the MATLAB or
  standalone command (e.g. ``"/opt/spm12/run_spm12.sh /opt/mcr script"`` with
  ``use_mcr=True``); it is set on each SPM node, not globally.

With the SPM backend the T1w <-> MNI "transforms" are SPM deformation fields
(``y_*.nii`` / ``iy_*.nii``) instead of ITK ``.h5`` files; ``asl_to_t1w`` is
an ITK ``.mat`` with both backends.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline import segmentation as seg
from asl_pipeline.interfaces.motion import ASLRealign
from asl_pipeline.interfaces.nuisance import NuisanceRegression
from asl_pipeline.interfaces.registration import (
    T1W_MAPS,
    ApplyTransformChain,
    ASLToT1w,
    MNITemplate,
    T1wBrain,
    T1wTissues,
    TissuesToASL,
)
from asl_pipeline.interfaces.spm import (
    SetWorldAffine,
    SPMASLRealign,
    SPMCoregToITK,
    SPMTissues,
    StackForSPM,
    UncompressNifti,
)
from asl_pipeline.motion import STILL_PAIR_FD, ZIGZAG_THRESHOLD

BACKENDS = ("embedded", "spm")

#: The template nilearn bundles: ICBM 2009a non-linear *symmetric* (tal_nlin_sym_09a).
TEMPLATE = "MNI152NLin2009aSym"

HMC_OUTPUTS = [
    "asl_corrected",
    "m0_corrected",
    "ref_image",
    "motion_params_raw",
    "motion_params",
    "confounds",
    "ref_distorted",
]
#: HMC outputs that exist only with an M0 file or a field map.
_OPTIONAL_HMC = ("m0_corrected", "ref_distorted")
ANAT_OUTPUTS = [
    "t1w_preproc",
    "t1w_brain",
    "t1w_mask",
    "gm_t1w",
    "wm_t1w",
    "csf_t1w",
    "t1w_to_mni",
    "mni_to_t1w",
    "gm_pv_t1w",
    "wm_pv_t1w",
    "csf_pv_t1w",
]
REG_OUTPUTS = ["asl_to_t1w", "gm", "wm", "csf", "asl_mask", "t1w_mask_asl"]


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def _spm_node(interface, name, *, spm_cmd, use_mcr, mem_gb, **inputs):
    """An SPM node configured per node (no global MATLAB settings)."""
    if spm_cmd:
        interface.inputs.matlab_cmd = spm_cmd
    interface.inputs.use_mcr = bool(use_mcr)
    for key, value in inputs.items():
        setattr(interface.inputs, key, value)
    return pe.Node(interface, name=name, mem_gb=mem_gb, n_procs=1)


def init_asl_hmc_wf(
    *,
    backend: str = "embedded",
    spm_cmd: str | None = None,
    use_mcr: bool = False,
    volume_types: list[str] | None = None,
    has_m0_file: bool = False,
    remove_zigzag: bool = True,
    interp_order: int = 3,
    zigzag_method: str = "detect",
    reslice_mode: str = "volume",
    sdc: dict | None = None,
    mem_gb: float = 1.0,
    omp_nthreads: int = 1,
    name: str = "asl_hmc_wf",
):
    """ASL-aware head-motion correction (methods spec, section 3).

    .. workflow::

        from asl_pipeline.workflows.spatial import init_asl_hmc_wf
        wf = init_asl_hmc_wf(mem_gb=0.1, omp_nthreads=1)

    Parameters
    ----------
    backend
        ``"embedded"`` or ``"spm"`` (SPM12 Realign estimates, register to mean).
    spm_cmd, use_mcr
        MATLAB / SPM standalone command and whether it is the MCR build.
    volume_types
        aslcontext volume types (documentation only; the TSV is read at run time).
    has_m0_file
        Whether ``inputnode.m0_file`` will be connected.
    remove_zigzag
        Regress the label/control zig-zag out of the parameters (Wang 2012).
    interp_order
        Spline order of the single final reslice.
    zigzag_method
        ``"detect"`` (default): the control - label offset of the estimates,
        measured on the pair differences after their local trend, is subtracted
        only where it exceeds 4 robust standard errors, pairs that did not move
        beyond the trend share it, and every other volume keeps its own
        estimate; ``"interpolate"``: each pair's mean parameters interpolated to
        every volume (the bias cancels, motion within a pair is lost);
        ``"regress"``: the spec's zig-zag regression (Wang 2012); ``"none"``: the
        raw estimates. See :data:`asl_pipeline.motion.ZIGZAG_METHODS`.
    reslice_mode
        ``"volume"`` (default), ``"pair"`` (both volumes of a pair with the
        pair's mean parameters) or ``"none"`` (estimate and report only).
    sdc
        Susceptibility distortion correction in the same reslice: the
        realignment inputs ``pe_direction``, ``readout_time`` (and optionally
        ``m0_pe_direction``, ``m0_readout_time``, ``fieldmap_frame``); the
        field comes in through ``inputnode.fieldmap``. None: no SDC.

    Inputs
    ------
    asl_file, aslcontext, m0_file (optional), fieldmap (Hz, with ``sdc``)

    Outputs
    -------
    asl_corrected, m0_corrected, ref_image, motion_params_raw, motion_params,
    confounds (TSV with the parameters, ``raw_*``, ``framewise_displacement``,
    ``rmsd``), ref_distorted (with ``sdc``: the reference before the distortion
    correction)
    """
    _check_backend(backend)
    workflow = pe.Workflow(name=name)
    tool = "SPM12 Realign (estimation)" if backend == "spm" else "a Gauss-Newton rigid-body fit"
    zigzag = {
        "detect": "the label/control offset of the estimates (Wang 2012) was measured on "
        "each control/label pair's difference after the local trend of the pair means was "
        "taken out (median, robust standard error) and subtracted from the parameters where "
        f"it exceeded {ZIGZAG_THRESHOLD:g} standard errors; the two volumes of a pair that did "
        f"not move beyond that trend (less than {STILL_PAIR_FD:g} mm on a 50 mm sphere) were "
        "put on it, and every other volume kept its own estimate",
        "none": "the estimates were used as they are (no label/control correction)",
        "interpolate": "the label/control bias of the estimates (Wang 2012) was removed by "
        "averaging the parameters of each control/label pair and interpolating these pair "
        "means linearly to every volume (which keeps drift within a pair)",
        "regress": "following Wang (2012), the label/control zig-zag (+1 control, -1 label) "
        "was regressed out of each parameter time course (orthogonal projection, intercept "
        "kept)",
    }[zigzag_method]
    reslicing = {
        "pair": "the control and label images of each pair were resliced once with the "
        "pair's mean cleaned parameters, so that static tissue cancels exactly in their "
        f"difference (spline order {interp_order})",
        "volume": "every volume was resliced once with its cleaned parameters "
        f"(spline order {interp_order})",
        "none": "the series was not resliced (motion estimates reported only)",
    }[reslice_mode]
    if sdc:
        reslicing += (
            "; the susceptibility distortion was undone in the same interpolation (the "
            "field map shift along the phase-encoding axis composed with the motion, with "
            "the Jacobian intensity correction), so every volume was resampled once"
        )
    workflow.__desc__ = (
        f"Head motion was estimated with {tool}: six rigid-body parameters per volume, "
        "first against the first volume and then against the mean of the realigned "
        f"series; {zigzag}, and {reslicing}. Framewise displacement (Power et "
        "al. 2012, 50 mm sphere) and RMS displacement (Jenkinson 2002) were computed "
        "from the cleaned parameters."
    )
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["asl_file", "aslcontext", "m0_file"] + (["fieldmap"] if sdc else [])
        ),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=HMC_OUTPUTS), name="outputnode")

    if backend == "embedded":
        realign = pe.Node(
            ASLRealign(
                remove_zigzag=remove_zigzag,
                zigzag_method=zigzag_method,
                interp_order=interp_order,
                reslice_mode=reslice_mode,
            ),
            name="asl_realign",
            mem_gb=mem_gb * 3,
            n_procs=1,
        )
        workflow.connect([
            (inputnode, realign, [("asl_file", "asl_file"), ("aslcontext", "aslcontext")]),
        ])  # fmt: skip
        if has_m0_file:
            workflow.connect(inputnode, "m0_file", realign, "m0_file")
        final = realign
    else:
        from nipype.interfaces import spm

        stack = pe.Node(StackForSPM(), name="stack_for_spm", mem_gb=mem_gb * 2)
        estimate = _spm_node(
            spm.Realign(),
            "spm_realign",
            spm_cmd=spm_cmd,
            use_mcr=use_mcr,
            mem_gb=mem_gb * 2,
            jobtype="estimate",
            register_to_mean=True,
            quality=0.9,
            fwhm=5.0,
            separation=4.0,
            interp=2,
        )
        final = pe.Node(
            SPMASLRealign(
                remove_zigzag=remove_zigzag,
                zigzag_method=zigzag_method,
                interp_order=interp_order,
                reslice_mode=reslice_mode,
            ),
            name="spm_asl_realign",
            mem_gb=mem_gb * 3,
        )
        workflow.connect([
            (inputnode, stack, [("asl_file", "asl_file")]),
            (stack, estimate, [("out_file", "in_files")]),
            (estimate, final, [("realignment_parameters", "realignment_parameters")]),
            (inputnode, final, [("asl_file", "asl_file"), ("aslcontext", "aslcontext")]),
        ])  # fmt: skip
        if has_m0_file:
            workflow.connect([
                (inputnode, stack, [("m0_file", "m0_file")]),
                (inputnode, final, [("m0_file", "m0_file")]),
            ])  # fmt: skip

    workflow.connect([
        (final, outputnode, [(f, f) for f in HMC_OUTPUTS if f not in _OPTIONAL_HMC]),
    ])  # fmt: skip
    if has_m0_file:
        workflow.connect(final, "m0_corrected", outputnode, "m0_corrected")
    if sdc:
        for key, value in sdc.items():
            setattr(final.inputs, key, value)
        workflow.connect(inputnode, "fieldmap", final, "fieldmap")
        workflow.connect(final, "ref_distorted", outputnode, "ref_distorted")
    return workflow


def init_anat_wf(
    *,
    backend: str = "embedded",
    spm_cmd: str | None = None,
    use_mcr: bool = False,
    template_resolution: int = 2,
    transform: str = "SyN",
    output_dir: str | None = None,
    source_file: str | None = None,
    mem_gb: float = 4.0,
    omp_nthreads: int = 1,
    seed: int = 1,
    name: str = "anat_wf",
):
    """T1w: bias correction, brain extraction, GM/WM/CSF maps, T1w <-> MNI.

    .. workflow::

        from asl_pipeline.workflows.spatial import init_anat_wf
        wf = init_anat_wf(omp_nthreads=1)

    Parameters
    ----------
    backend
        ``"embedded"`` (antspyx: N4, affine + SyN to nilearn's MNI152, template
        brain mask, Atropos with template priors) or ``"spm"`` (NewSegment with
        deformation fields).
    template_resolution, transform
        Embedded backend: template grid (mm) and ``"SyN"`` or ``"Affine"``.
    output_dir, source_file
        When both are given, the anatomical derivatives are stored under
        ``output_dir`` with BIDS names derived from ``source_file``.

    Inputs
    ------
    t1w

    Outputs
    -------
    t1w_preproc, t1w_brain, t1w_mask, gm_t1w, wm_t1w, csf_t1w,
    t1w_to_mni, mni_to_t1w
    gm_pv_t1w, wm_pv_t1w, csf_pv_t1w
        Partial-volume fractions (embedded: the mixel model of
        :func:`asl_pipeline.segmentation.partial_volumes`; SPM: its tissue
        maps), read by the partial-volume correction.
    """
    _check_backend(backend)
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=ANAT_OUTPUTS), name="outputnode")
    if backend == "embedded":
        workflow.__desc__ = (
            "The T1w image was corrected for intensity non-uniformity (N4), registered to "
            f"the MNI152 template bundled with nilearn ({template_resolution} mm; affine "
            "initialised on an intensity-based rough brain mask, "
            f"then {transform} on the brain region, ANTs via antspyx), skull-stripped with "
            "the template brain mask brought back through the inverse transform, and "
            "segmented into GM, WM and CSF with Atropos guided by the template tissue "
            "priors (prior weight 0.25). Partial-volume fractions were computed from the "
            "bias-corrected intensities with a two-tissue mixel model (pure-tissue "
            "intensities: the median of the voxels with a posterior of at least "
            f"{seg.PURE_POSTERIOR:g})."
        )
        # two nodes: the ASL registration needs only the brain, so it runs beside Atropos
        anat = pe.Node(
            T1wBrain(
                template_resolution=template_resolution,
                transform=transform,
                n_procs=omp_nthreads,
                seed=seed,
            ),
            name="t1w_preproc",
            mem_gb=mem_gb,
            n_procs=omp_nthreads,
        )
        tissues = pe.Node(
            T1wTissues(template_resolution=template_resolution, n_procs=omp_nthreads),
            name="t1w_tissues",
            mem_gb=mem_gb,
            n_procs=omp_nthreads,
        )
        brain_outputs = [f for f in ANAT_OUTPUTS if f in T1wBrain.output_spec.class_trait_names()]
        workflow.connect([
            (inputnode, anat, [("t1w", "t1w_file")]),
            (anat, tissues, [("t1w_preproc", "t1w_preproc"), ("t1w_mask", "t1w_mask"),
                             ("mni_to_t1w", "mni_to_t1w")]),
            (anat, outputnode, [(f, f) for f in brain_outputs]),
            (tissues, outputnode, [(f, f) for f in ANAT_OUTPUTS if f not in brain_outputs]),
        ])  # fmt: skip
    else:
        from nipype.interfaces import spm

        workflow.__desc__ = (
            "The T1w image was segmented and normalised with SPM12's unified segmentation "
            "(NewSegment), which gave the GM, WM and CSF maps, the bias-corrected image and "
            "the forward and inverse deformation fields to MNI space."
        )
        gunzip = pe.Node(UncompressNifti(), name="gunzip_t1w", mem_gb=mem_gb)
        segment = _spm_node(
            spm.NewSegment(),
            "spm_segment",
            spm_cmd=spm_cmd,
            use_mcr=use_mcr,
            mem_gb=mem_gb,
            channel_info=(0.0001, 60.0, (True, True)),
            write_deformation_fields=[True, True],
        )
        tissues = pe.Node(SPMTissues(), name="spm_tissues", mem_gb=mem_gb)
        workflow.connect([
            (inputnode, gunzip, [("t1w", "in_files")]),
            (gunzip, segment, [("out_files", "channel_files")]),
            (gunzip, tissues, [("out_file", "t1w_file")]),
            (segment, tissues, [("native_class_images", "native_class_images"),
                                (("bias_corrected_images", _first), "bias_corrected")]),
            (tissues, outputnode, [(f, f) for f in ANAT_OUTPUTS[:6]]),
            # SPM's tissue maps are its partial-volume estimates (as ExploreASL reads them)
            (tissues, outputnode, [(f"{t}_t1w", f"{t}_pv_t1w") for t in ("gm", "wm", "csf")]),
            (segment, outputnode, [("forward_deformation_field", "t1w_to_mni"),
                                   ("inverse_deformation_field", "mni_to_t1w")]),
        ])  # fmt: skip

    if output_dir and source_file:
        from asl_pipeline.derivatives import derivative_path, raw_uri
        from asl_pipeline.interfaces.bids import DerivativesDataSink

        stored = (
            ("t1w_preproc", dict(suffix="T1w", desc="preproc")),
            ("t1w_mask", dict(suffix="mask", desc="brain")),
            ("gm_t1w", dict(suffix="probseg", label="GM")),
            ("wm_t1w", dict(suffix="probseg", label="WM")),
            ("csf_t1w", dict(suffix="probseg", label="CSF")),
            ("gm_pv_t1w", dict(suffix="probseg", label="GM", desc="pv")),
            ("wm_pv_t1w", dict(suffix="probseg", label="WM", desc="pv")),
            ("csf_pv_t1w", dict(suffix="probseg", label="CSF", desc="pv")),
            (
                "t1w_to_mni",
                dict(suffix="xfm", from_space="T1w", to_space="MNI152NLin2009aSym", mode="image"),
            ),
            (
                "mni_to_t1w",
                dict(suffix="xfm", from_space="MNI152NLin2009aSym", to_space="T1w", mode="image"),
            ),
        )
        raw_t1w = raw_uri(source_file)
        preproc = derivative_path(source_file, suffix="T1w", datatype="anat", desc="preproc")
        on_t1w = {"SpatialReference": f"bids::{preproc}"}
        meta = {
            # BIDS requires SkullStripped in the sidecar of desc-preproc_T1w
            "t1w_preproc": {"SkullStripped": False, "Description": "T1w corrected for "
                            "intensity non-uniformity (N4 or SPM's bias correction)."},
            "t1w_mask": {"Type": "Brain", "Description": "Brain mask of the T1w.", **on_t1w},
            "gm_t1w": {"Description": "Grey-matter probability (T1w space).", **on_t1w},
            "wm_t1w": {"Description": "White-matter probability (T1w space).", **on_t1w},
            "csf_t1w": {"Description": "CSF probability (T1w space).", **on_t1w},
            **{f"{t.lower()}_pv_t1w": {"Description": f"{t} partial-volume fraction (T1w "
                                       "space), read by the partial-volume correction.",
                                       **on_t1w} for t in ("GM", "WM", "CSF")},
            "t1w_to_mni": {"Description": "Transform from the T1w to the template."},
            "mni_to_t1w": {"Description": "Transform from the template to the T1w."},
        }  # fmt: skip
        for field, entities in stored:
            ds = pe.Node(
                DerivativesDataSink(
                    base_directory=str(output_dir),
                    source_file=str(source_file),
                    datatype="anat",
                    meta_dict=meta.get(field, {}),
                    sources=[raw_t1w] if field == "t1w_preproc" else [f"bids::{preproc}"],
                    **entities,
                ),
                name=f"ds_{field}",
                run_without_submitting=True,
                mem_gb=0.1,
            )
            workflow.connect(outputnode, field, ds, "in_file")
    return workflow


def _first(value):
    if isinstance(value, list | tuple):
        return value[0] if value else value
    return value


def init_asl_reg_wf(
    *,
    backend: str = "embedded",
    spm_cmd: str | None = None,
    use_mcr: bool = False,
    mem_gb: float = 1.0,
    omp_nthreads: int = 1,
    seed: int = 1,
    name: str = "asl_reg_wf",
):
    """ASL reference -> T1w rigid registration; tissue maps and mask into ASL space.

    .. workflow::

        from asl_pipeline.workflows.spatial import init_asl_reg_wf
        wf = init_asl_reg_wf(mem_gb=0.1, omp_nthreads=1)

    Inputs
    ------
    ref_image, t1w_brain, t1w_mask, gm_t1w, wm_t1w, csf_t1w

    Outputs
    -------
    asl_to_t1w (ITK .mat), gm, wm, csf (ASL space), asl_mask (T1w brain mask in
    ASL space where the ASL reference has signal), t1w_mask_asl (T1w brain mask
    in ASL space, for the coregistration Dice)
    """
    _check_backend(backend)
    workflow = pe.Workflow(name=name)
    fields = ["ref_image", "t1w_brain", *T1W_MAPS]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=REG_OUTPUTS), name="outputnode")
    # the maps come into ASL space in their own node: the registration needs only the
    # skull-stripped T1w, so it runs while the T1w is segmented
    to_asl = pe.Node(TissuesToASL(), name="tissues_to_asl", mem_gb=mem_gb)
    workflow.connect([
        (inputnode, to_asl, [("ref_image", "ref_image")] + [(f, f) for f in T1W_MAPS]),
        (to_asl, outputnode, [(f, f) for f in REG_OUTPUTS if f != "asl_to_t1w"]),
    ])  # fmt: skip
    if backend == "embedded":
        workflow.__desc__ = (
            "The ASL reference (mean of the realigned control and label volumes) was "
            "registered to the skull-stripped T1w with a rigid-body (6 dof) ANTs "
            "registration (Mattes mutual information) run from four starts (the "
            "reference as given and after N4 bias correction, each initialised at the "
            "centres of mass and at the scanner coordinates), keeping the result with the "
            "highest mutual information with the bias-corrected reference; the GM, WM and "
            "CSF maps were brought into ASL space through its inverse as the fraction of "
            "each ASL voxel (the T1w probabilities averaged over the voxel's volume), and "
            "the brain mask at the voxel centres."
        )
        coreg = pe.Node(
            ASLToT1w(n_procs=omp_nthreads, seed=seed),
            name="asl_to_t1w",
            mem_gb=mem_gb,
            n_procs=omp_nthreads,
        )
        workflow.connect([
            (inputnode, coreg, [("ref_image", "ref_image"), ("t1w_brain", "t1w_brain")]),
            (coreg, to_asl, [("asl_to_t1w", "asl_to_t1w")]),
            (coreg, outputnode, [("asl_to_t1w", "asl_to_t1w")]),
        ])  # fmt: skip
    else:
        from nipype.interfaces import spm

        workflow.__desc__ = (
            "The ASL reference was registered to the skull-stripped T1w with SPM12 "
            "Coregister (normalised mutual information, rigid body); the GM, WM and CSF "
            "maps were brought into ASL space through its inverse as the fraction of each "
            "ASL voxel (the T1w probabilities averaged over the voxel's volume), and the "
            "brain mask at the voxel centres."
        )
        gz_ref = pe.Node(UncompressNifti(), name="gunzip_ref", mem_gb=mem_gb)
        gz_t1w = pe.Node(UncompressNifti(), name="gunzip_t1w_brain", mem_gb=mem_gb)
        coreg = _spm_node(
            spm.Coregister(),
            "spm_coregister",
            spm_cmd=spm_cmd,
            use_mcr=use_mcr,
            mem_gb=mem_gb,
            jobtype="estimate",
            cost_function="nmi",
        )
        to_itk = pe.Node(SPMCoregToITK(), name="coreg_to_itk", mem_gb=0.2)
        workflow.connect([
            (inputnode, gz_ref, [("ref_image", "in_files")]),
            (inputnode, gz_t1w, [("t1w_brain", "in_files")]),
            (gz_t1w, coreg, [("out_file", "target")]),
            (gz_ref, coreg, [("out_file", "source")]),
            (gz_ref, to_itk, [("out_file", "source_file")]),
            (coreg, to_itk, [("coregistered_source", "coregistered_source")]),
            (to_itk, to_asl, [("asl_to_t1w", "asl_to_t1w")]),
            (to_itk, outputnode, [("asl_to_t1w", "asl_to_t1w")]),
        ])  # fmt: skip
    return workflow


def init_resample_wf(
    *,
    spaces=("MNI152NLin2009aSym",),
    backend: str = "embedded",
    spm_cmd: str | None = None,
    use_mcr: bool = False,
    template_resolution: int = 2,
    interpolation: str = "linear",
    mem_gb: float = 1.0,
    omp_nthreads: int = 1,
    name: str = "resample_wf",
):
    """Resample an ASL-space map to T1w and/or MNI space, in ONE interpolation.

    The ASL -> T1w rigid transform and the T1w -> MNI transform are chained
    (ANTs order ``[t1w_to_mni, asl_to_t1w]``); with the SPM backend the rigid
    transform is written into the header and SPM Normalise (write) applies
    the deformation field, again one interpolation.

    .. workflow::

        from asl_pipeline.workflows.spatial import init_resample_wf
        wf = init_resample_wf(spaces=["T1w", "MNI152NLin2009aSym"])

    Parameters
    ----------
    spaces
        Any of ``"T1w"`` and an MNI space name (anything starting with ``MNI``).

    Inputs
    ------
    in_file, asl_to_t1w, t1w_to_mni, t1w_reference

    Outputs
    -------
    mni_file, t1w_file
    """
    _check_backend(backend)
    spaces = list(spaces)
    want_mni = any(str(s).startswith("MNI") for s in spaces)
    want_t1w = "T1w" in spaces
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "Maps were resampled from ASL space to "
        + " and ".join(s for s in spaces)
        + " in a single interpolation through the composed transforms."
    )
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["in_file", "asl_to_t1w", "t1w_to_mni", "t1w_reference"]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["mni_file", "t1w_file"]), name="outputnode")
    if backend == "embedded":
        if want_mni:
            tpl = pe.Node(MNITemplate(resolution=template_resolution), name="mni_template")
            chain = pe.Node(niu.Merge(2), name="chain_transforms", run_without_submitting=True)
            to_mni = pe.Node(
                ApplyTransformChain(interpolation=interpolation, suffix="_space-MNI"),
                name="to_mni",
                mem_gb=mem_gb,
                n_procs=omp_nthreads,
            )
            workflow.connect([
                (inputnode, chain, [("t1w_to_mni", "in1"), ("asl_to_t1w", "in2")]),
                (chain, to_mni, [("out", "transforms")]),
                (tpl, to_mni, [("t1", "reference")]),
                (inputnode, to_mni, [("in_file", "in_file")]),
                (to_mni, outputnode, [("out_file", "mni_file")]),
            ])  # fmt: skip
        if want_t1w:
            to_t1w = pe.Node(
                ApplyTransformChain(interpolation=interpolation, suffix="_space-T1w"),
                name="to_t1w",
                mem_gb=mem_gb,
                n_procs=omp_nthreads,
            )
            workflow.connect([
                (inputnode, to_t1w, [("in_file", "in_file"), ("asl_to_t1w", "transforms"),
                                     ("t1w_reference", "reference")]),
                (to_t1w, outputnode, [("out_file", "t1w_file")]),
            ])  # fmt: skip
        return workflow

    from nipype.interfaces import spm

    set_affine = pe.Node(SetWorldAffine(), name="set_world_affine", mem_gb=mem_gb)
    workflow.connect([
        (inputnode, set_affine, [("in_file", "in_file"), ("asl_to_t1w", "asl_to_t1w")]),
    ])  # fmt: skip
    interp = {"linear": 1, "bSpline": 4, "nearestNeighbor": 0}[interpolation]
    if want_mni:
        norm = _spm_node(
            spm.Normalize12(),
            "spm_normalise_write",
            spm_cmd=spm_cmd,
            use_mcr=use_mcr,
            mem_gb=mem_gb,
            jobtype="write",
            write_voxel_sizes=[float(template_resolution)] * 3,
            write_interp=interp,
        )
        workflow.connect([
            (inputnode, norm, [("t1w_to_mni", "deformation_file")]),
            (set_affine, norm, [("out_file", "apply_to_files")]),
            (norm, outputnode, [(("normalized_files", _first), "mni_file")]),
        ])  # fmt: skip
    if want_t1w:
        gz = pe.Node(UncompressNifti(), name="gunzip_t1w_reference", mem_gb=mem_gb)
        reslice = _spm_node(
            spm.Reslice(),
            "spm_reslice_t1w",
            spm_cmd=spm_cmd,
            use_mcr=use_mcr,
            mem_gb=mem_gb,
            interp=interp,
        )
        workflow.connect([
            (inputnode, gz, [("t1w_reference", "in_files")]),
            (gz, reslice, [("out_file", "space_defining")]),
            (set_affine, reslice, [("out_file", "in_file")]),
            (reslice, outputnode, [("out_file", "t1w_file")]),
        ])  # fmt: skip
    return workflow


def init_nuisance_wf(
    *,
    volume_types: list[str],
    regress: bool = True,
    fwhm: float = 3.0,
    global_signal: bool = True,
    mem_gb: float = 1.0,
    name: str = "nuisance_wf",
):
    """Zig-zag-orthogonal nuisance regression and smoothing (methods spec, section 4).

    .. workflow::

        from asl_pipeline.workflows.spatial import init_nuisance_wf
        wf = init_nuisance_wf(volume_types=["control", "label"] * 2)

    Parameters
    ----------
    volume_types
        aslcontext volume types of the series.
    regress
        Run the regression (else smoothing only).
    fwhm
        Gaussian FWHM in mm (0 disables smoothing).
    global_signal
        Include the global signal among the regressors.

    Inputs
    ------
    asl_file, motion (cleaned parameters TSV), mask, csf

    Outputs
    -------
    asl_file, design
    """
    workflow = pe.Workflow(name=name)
    parts = []
    if regress:
        regs = "the six cleaned motion parameters, the mean CSF signal" + (
            " and the global signal" if global_signal else ""
        )
        parts.append(
            f"The voxel time courses were regressed on {regs}, each regressor first made "
            "orthogonal to the label/control zig-zag so that perfusion was not removed"
        )
    if fwhm > 0:
        parts.append(f"smoothed with a Gaussian kernel of FWHM {fwhm:g} mm")
    workflow.__desc__ = ("; then ".join(parts) + ".") if parts else ""
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["asl_file", "motion", "mask", "csf"]), name="inputnode"
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["asl_file", "design"]), name="outputnode")
    node = pe.Node(
        NuisanceRegression(
            volume_types=list(volume_types),
            regress=regress,
            global_signal=global_signal,
            fwhm=fwhm,
        ),
        name="nuisance",
        mem_gb=mem_gb * 3,
        n_procs=1,
    )
    workflow.connect([
        (inputnode, node, [("asl_file", "asl_file"), ("mask", "mask")]),
        (node, outputnode, [("asl_file", "asl_file"), ("design", "design")]),
    ])  # fmt: skip
    if regress:
        workflow.connect([
            (inputnode, node, [("motion", "motion"), ("csf", "csf")]),
        ])  # fmt: skip
    return workflow
