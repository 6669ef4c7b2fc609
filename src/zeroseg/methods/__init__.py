"""The methods, by name. Each entry is imported explicitly; an unknown name lists the valid ones."""

from zeroseg.methods.alignzeg import AlignZeg, AlignZegNoBC, AlignZegNoGen, AlignZegNoRefine
from zeroseg.methods.base import Method
from zeroseg.methods.mask_projection import MaskProjection
from zeroseg.methods.pading import PADing, PADingG, PADingP, PADingPA
from zeroseg.methods.projection import Oracle, Projection
from zeroseg.methods.sazs import Sazs, SazsNoFusion
from zeroseg.methods.zegclip import ZegCLIP, ZegCLIPNoDPT, ZegCLIPNoNEL, ZegCLIPNoRD, ZegCLIPST
from zeroseg.methods.zs3net import ZS3Net, ZS5Net

METHODS: dict[str, type[Method]] = {
    Projection.name: Projection,
    Oracle.name: Oracle,
    MaskProjection.name: MaskProjection,
    PADing.name: PADing,
    PADingG.name: PADingG,
    PADingP.name: PADingP,
    PADingPA.name: PADingPA,
    Sazs.name: Sazs,
    SazsNoFusion.name: SazsNoFusion,
    ZS3Net.name: ZS3Net,
    ZS5Net.name: ZS5Net,
    ZegCLIP.name: ZegCLIP,
    ZegCLIPST.name: ZegCLIPST,
    ZegCLIPNoDPT.name: ZegCLIPNoDPT,
    ZegCLIPNoRD.name: ZegCLIPNoRD,
    ZegCLIPNoNEL.name: ZegCLIPNoNEL,
    AlignZeg.name: AlignZeg,
    AlignZegNoRefine.name: AlignZegNoRefine,
    AlignZegNoGen.name: AlignZegNoGen,
    AlignZegNoBC.name: AlignZegNoBC,
}

__all__ = ["METHODS", "Method"]
