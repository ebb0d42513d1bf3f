"""Prompt presets for "Prompt → H&E", built from the paper's training data (PathGen/TCGA captions).

CRAFTS was fine-tuned on captions covering 30 TCGA cancer types; the paper's abstract does not list which
30, so we offer every TCGA project with diagnostic H&E slides (32: all but LAML, a leukaemia with no tissue
slides). Presets only write text into the prompt box: the user can edit it freely.
"""

from __future__ import annotations

#: TCGA project code → cancer type, as the TCGA/GDC names them.
TCGA_CANCER_TYPES = {
    "ACC": "adrenocortical carcinoma",
    "BLCA": "bladder urothelial carcinoma",
    "BRCA": "breast invasive carcinoma",
    "CESC": "cervical squamous cell carcinoma and endocervical adenocarcinoma",
    "CHOL": "cholangiocarcinoma",
    "COAD": "colon adenocarcinoma",
    "DLBC": "diffuse large B-cell lymphoma",
    "ESCA": "esophageal carcinoma",
    "GBM": "glioblastoma multiforme",
    "HNSC": "head and neck squamous cell carcinoma",
    "KICH": "kidney chromophobe carcinoma",
    "KIRC": "kidney renal clear cell carcinoma",
    "KIRP": "kidney renal papillary cell carcinoma",
    "LGG": "brain lower grade glioma",
    "LIHC": "liver hepatocellular carcinoma",
    "LUAD": "lung adenocarcinoma",
    "LUSC": "lung squamous cell carcinoma",
    "MESO": "mesothelioma",
    "OV": "ovarian serous cystadenocarcinoma",
    "PAAD": "pancreatic adenocarcinoma",
    "PCPG": "pheochromocytoma and paraganglioma",
    "PRAD": "prostate adenocarcinoma",
    "READ": "rectum adenocarcinoma",
    "SARC": "sarcoma",
    "SKCM": "skin cutaneous melanoma",
    "STAD": "stomach adenocarcinoma",
    "TGCT": "testicular germ cell tumor",
    "THCA": "thyroid carcinoma",
    "THYM": "thymoma",
    "UCEC": "uterine corpus endometrial carcinoma",
    "UCS": "uterine carcinosarcoma",
    "UVM": "uveal melanoma",
}

#: Tissue compartments and stain descriptors that PathGen-style captions use.
TISSUE_DESCRIPTORS = ("tumor", "tumor-infiltrating lymphocytes", "stroma", "necrosis", "normal tissue")
MAGNIFICATIONS = ("40x", "20x", "10x")


def preset_prompt(code: str, tissue: str = "tumor", magnification: str = "40x") -> str:
    """A caption-style prompt, e.g. 'H&E-stained histopathology image of lung adenocarcinoma, tumor, 40x'."""
    if code not in TCGA_CANCER_TYPES:
        raise ValueError(f"Unknown TCGA project '{code}'; choose one of {', '.join(TCGA_CANCER_TYPES)}.")
    return (f"H&E-stained histopathology image of {TCGA_CANCER_TYPES[code]} ({code}), {tissue}, "
            f"{magnification} magnification, hematoxylin-stained nuclei and eosin-stained cytoplasm")
