"""Writes small fake checkouts of pytorch-CycleGAN-and-pix2pix for tests/test_reference_adapter.py.

They are laid out like the upstream repository (options/, models/ with the same class and
option names) but are written for these tests: tiny networks, and assertions that fail
when the benchmark's adapter hands the model options the way it must not (a missing or
mistyped option, our settings not applied). Two generations:
- `current`: models built as `Model(opt)`; options from `initialize(parser)`; the model
  reads `opt.device`, which (as in some versions) only the options' `parse()` sets;
- `old_2018`: models built as `Model()` + `initialize(opt)`; `TrainOptions.initialize()`
  filling `self.parser`; 2018 option names (`which_model_netG`, `no_lsgan`, ...).
"""

from __future__ import annotations

from pathlib import Path

_MODEL_COMMON = '''
import torch
from torch import nn


def tiny(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 3, padding=1)
'''

CURRENT = {
    "options/__init__.py": "",
    "options/base_options.py": '''
import torch


class BaseOptions:
    def __init__(self):
        self.initialized = False

    def initialize(self, parser):
        parser.add_argument("--dataroot", required=True)
        parser.add_argument("--name", type=str, default="experiment_name")
        parser.add_argument("--gpu_ids", type=str, default="0")
        parser.add_argument("--checkpoints_dir", type=str, default="./checkpoints")
        parser.add_argument("--model", type=str, default="cycle_gan")
        parser.add_argument("--input_nc", type=int, default=3)
        parser.add_argument("--output_nc", type=int, default=3)
        parser.add_argument("--ngf", type=int, default=64)
        parser.add_argument("--netG", type=str, default="resnet_9blocks")
        parser.add_argument("--norm", type=str, default="instance")
        parser.add_argument("--no_dropout", action="store_true")
        parser.add_argument("--direction", type=str, default="AtoB")
        parser.add_argument("--batch_size", type=int, default=1)
        parser.add_argument("--preprocess", type=str, default="resize_and_crop")
        parser.add_argument("--init_gain", type=float, default=0.02)
        self.initialized = True
        return parser

    def parse(self):
        raise AssertionError("the benchmark must not run the checkout's parse(): it reads sys.argv")
''',
    "options/train_options.py": '''
from .base_options import BaseOptions


class TrainOptions(BaseOptions):
    def initialize(self, parser):
        parser = BaseOptions.initialize(self, parser)
        parser.add_argument("--lr", type=float, default=0.0002)
        parser.add_argument("--beta1", type=float, default=0.5)
        parser.add_argument("--gan_mode", type=str, default="lsgan")
        parser.add_argument("--pool_size", type=int, default=50)
        parser.add_argument("--lr_policy", type=str, default="linear")
        self.isTrain = True
        return parser
''',
    "models/__init__.py": "",
    "models/base_model.py": '''
import os


class BaseModel:
    def __init__(self, opt):
        self.opt = opt
        self.isTrain = opt.isTrain
        self.device = opt.device  # set by the options' parse() in this version, not by the parser
        self.save_dir = os.path.join(opt.checkpoints_dir, opt.name)
        assert opt.preprocess == "resize_and_crop" and isinstance(opt.gpu_ids, list)
''',
    "models/pix2pix_model.py": _MODEL_COMMON + '''
from .base_model import BaseModel


class Pix2PixModel(BaseModel):
    @staticmethod
    def modify_commandline_options(parser, is_train=True):
        parser.set_defaults(norm="batch", netG="unet_256")
        if is_train:
            parser.set_defaults(pool_size=0, gan_mode="vanilla")
            parser.add_argument("--lambda_L1", type=float, default=100.0)
        return parser

    def __init__(self, opt):
        BaseModel.__init__(self, opt)
        assert opt.netG in ("unet_256", "resnet_9blocks") and opt.norm == "batch"
        assert opt.gan_mode == "vanilla"
        assert opt.pool_size == 0 and opt.lr_policy == "linear"
        self.netG = tiny(opt.input_nc, opt.output_nc).to(self.device)
        self.netD = tiny(opt.input_nc + opt.output_nc, 1).to(self.device)
        self.opt_G = torch.optim.Adam(self.netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
        self.opt_D = torch.optim.Adam(self.netD.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))

    def set_input(self, input):
        a_to_b = self.opt.direction == "AtoB"
        self.real_A = input["A" if a_to_b else "B"].to(self.device)
        self.real_B = input["B" if a_to_b else "A"].to(self.device)

    def optimize_parameters(self):
        fake = self.netG(self.real_A)
        self.opt_D.zero_grad()
        self.netD(torch.cat([self.real_A, fake.detach()], 1)).mean().backward()
        self.opt_D.step()
        self.opt_G.zero_grad()
        ((fake - self.real_B).abs().mean() * self.opt.lambda_L1).backward()
        self.opt_G.step()
''',
    "models/cycle_gan_model.py": _MODEL_COMMON + '''
from .base_model import BaseModel


class CycleGANModel(BaseModel):
    @staticmethod
    def modify_commandline_options(parser, is_train=True):
        parser.set_defaults(no_dropout=True)
        if is_train:
            parser.add_argument("--lambda_A", type=float, default=10.0)
            parser.add_argument("--lambda_B", type=float, default=10.0)
            parser.add_argument("--lambda_identity", type=float, default=0.5)
        return parser

    def __init__(self, opt):
        BaseModel.__init__(self, opt)
        assert opt.input_nc == opt.output_nc == 3 and opt.no_dropout and opt.gan_mode == "lsgan"
        self.netG_A = tiny(3, 3).to(self.device)
        self.netG_B = tiny(3, 3).to(self.device)
        self.netD_A = tiny(3, 1).to(self.device)
        self.netD_B = tiny(3, 1).to(self.device)
        params = [p for n in (self.netG_A, self.netG_B, self.netD_A, self.netD_B) for p in n.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=opt.lr)

    def set_input(self, input):
        self.real_A = input["A"].to(self.device)
        self.real_B = input["B"].to(self.device)

    def optimize_parameters(self):
        self.optimizer.zero_grad()
        rec = self.netG_B(self.netG_A(self.real_A))
        loss = (rec - self.real_A).abs().mean() * self.opt.lambda_A
        loss = loss + self.netD_A(self.netG_A(self.real_A)).mean() + self.netD_B(self.real_B).mean()
        loss.backward()
        self.optimizer.step()
''',
}

OLD_2018 = {
    "options/__init__.py": "",
    "options/base_options.py": '''
import argparse


class BaseOptions:
    def __init__(self):
        self.parser = argparse.ArgumentParser()
        self.initialized = False

    def initialize(self):
        self.parser.add_argument("--dataroot", required=True)
        self.parser.add_argument("--batchSize", type=int, default=1)
        self.parser.add_argument("--input_nc", type=int, default=3)
        self.parser.add_argument("--output_nc", type=int, default=3)
        self.parser.add_argument("--which_model_netG", type=str, default="resnet_9blocks")
        self.parser.add_argument("--which_direction", type=str, default="AtoB")
        self.parser.add_argument("--gpu_ids", type=str, default="0")
        self.parser.add_argument("--name", type=str, default="experiment_name")
        self.parser.add_argument("--checkpoints_dir", type=str, default="./checkpoints")
        self.parser.add_argument("--norm", type=str, default="instance")
        self.parser.add_argument("--no_dropout", action="store_true")
        self.initialized = True
''',
    "options/train_options.py": '''
from .base_options import BaseOptions


class TrainOptions(BaseOptions):
    def initialize(self):
        BaseOptions.initialize(self)
        self.parser.add_argument("--lr", type=float, default=0.0002)
        self.parser.add_argument("--no_lsgan", action="store_true")
        self.parser.add_argument("--pool_size", type=int, default=50)
        self.isTrain = True
''',
    "models/__init__.py": "",
    "models/base_model.py": '''
import torch


class BaseModel:
    def initialize(self, opt):
        self.opt = opt
        self.gpu_ids = opt.gpu_ids
        self.isTrain = opt.isTrain
        self.device = torch.device("cuda:%d" % self.gpu_ids[0]) if self.gpu_ids else torch.device("cpu")
''',
    "models/pix2pix_model.py": _MODEL_COMMON + '''
from .base_model import BaseModel


class Pix2PixModel(BaseModel):
    @staticmethod
    def modify_commandline_options(parser, is_train=True):
        parser.set_defaults(pool_size=0, no_lsgan=True, norm="batch", which_model_netG="unet_256")
        if is_train:
            parser.add_argument("--lambda_L1", type=float, default=100.0)
        return parser

    def initialize(self, opt):
        BaseModel.initialize(self, opt)
        assert opt.which_model_netG in ("unet_256", "resnet_9blocks") and opt.no_lsgan is True
        assert opt.which_direction == "AtoB" and opt.batchSize == 1
        self.netG = tiny(opt.input_nc, opt.output_nc).to(self.device)
        self.netD = tiny(opt.input_nc + opt.output_nc, 1).to(self.device)
        params = list(self.netG.parameters()) + list(self.netD.parameters())
        self.optimizer = torch.optim.Adam(params, lr=opt.lr)

    def set_input(self, input):
        self.real_A = input["A"].to(self.device)
        self.real_B = input["B"].to(self.device)

    def optimize_parameters(self):
        self.optimizer.zero_grad()
        fake = self.netG(self.real_A)
        loss = (fake - self.real_B).abs().mean() * self.opt.lambda_L1
        (loss + self.netD(torch.cat([self.real_A, fake], 1)).mean()).backward()
        self.optimizer.step()
''',
}

LAYOUTS = {"current": CURRENT, "old_2018": OLD_2018}


def write_fake_checkout(root: Path, layout: str) -> Path:
    """A fake `pytorch-CycleGAN-and-pix2pix` checkout under `root`; returns `root`."""
    repo = root / "pytorch-CycleGAN-and-pix2pix"
    for rel, text in LAYOUTS[layout].items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip("\n"), encoding="utf-8")
    return root
