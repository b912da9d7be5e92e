"""Input errors of tools/train.py and tools/test.py are one line (exit status 2, no traceback unless ``--debug``),
and their console is quiet by default (config dump only in the log file, ``--verbose`` prints it).

The demo configs run in a tmp cwd with ``--cfg-options`` pointing their data roots at small or broken folders.
The dataset checks themselves (wrappers, evaluator files) are also tested in-process, without a subprocess.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
from conftest import ROOT

DEMO = os.path.join(ROOT, 'configs', 'demo')
DET = os.path.join(DEMO, 'faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py')
SEG = os.path.join(DEMO, 'fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py')
POSE = os.path.join(DEMO, 'td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py')
CLS = os.path.join(DEMO, 'hrnet-tiny_1xb8-6e_demo-imagenet.py')
TRAIN = os.path.join(ROOT, 'tools', 'train.py')
TEST = os.path.join(ROOT, 'tools', 'test.py')


def _tool(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env.pop('WORLD_SIZE', None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess, prog: str, *expected: str) -> str:
    """Asserts exit status 2 and exactly one ``prog: error: ...`` line on stderr holding ``expected``."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 'Traceback' not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f'{prog}: error: '), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------- broken datasets


def _missing_root(tmp: Path) -> str:
    return str(tmp / 'nowhere')


def _missing_ann(tmp: Path) -> str:
    (tmp / 'coco').mkdir()
    return str(tmp / 'coco')


def _write_ann(tmp: Path, text: str) -> str:
    (tmp / 'coco' / 'annotations').mkdir(parents=True)
    (tmp / 'coco' / 'annotations' / 'instances_train.json').write_text(text)
    return str(tmp / 'coco')


def _corrupt_json(tmp: Path) -> str:
    return _write_ann(tmp, '{"images": [{"id": 1,')


def _json_without_images(tmp: Path) -> str:
    return _write_ann(tmp, json.dumps(dict(annotations=[], categories=[dict(id=1, name='square')])))


def _empty_cityscapes(tmp: Path) -> str:
    for sub in ('leftImg8bit/train', 'gtFine/train'):
        (tmp / 'cityscapes' / sub).mkdir(parents=True)
    return str(tmp / 'cityscapes')


def _imagenet_without_class_dirs(tmp: Path) -> str:
    from PIL import Image

    (tmp / 'imagenet' / 'train').mkdir(parents=True)
    Image.new('RGB', (8, 8)).save(tmp / 'imagenet' / 'train' / 'a.JPEG', format='JPEG')
    return str(tmp / 'imagenet')


# name: (config, writes the broken data root and returns it, expected problem, path in the message under the root)
CASES: Dict[str, Tuple[str, Callable[[Path], str], str, str]] = {
    'missing data_root': (DET, _missing_root, 'dataset folder not found', ''),
    'missing ann file': (DET, _missing_ann, 'annotation file not found', 'annotations/instances_train.json'),
    'corrupt json': (DET, _corrupt_json, 'annotation file is not valid COCO JSON',
                     'annotations/instances_train.json'),
    'json without images': (DET, _json_without_images, "annotation file has no 'images' key",
                            'annotations/instances_train.json'),
    'empty cityscapes folder': (SEG, _empty_cityscapes, 'folder is empty', 'leftImg8bit/train'),
    'imagenet without class dirs': (CLS, _imagenet_without_class_dirs, 'no class subfolders', 'train'),
}


@pytest.mark.parametrize('case', list(CASES))
def test_broken_train_dataset_is_one_line(tmp_path: Path, case: str) -> None:
    config, write, problem, sub = CASES[case]
    root = write(tmp_path)
    proc = _tool(tmp_path, TRAIN, config, '--work-dir', 'work', '--cfg-options',
                 f'train_dataloader.dataset.data_root={root}')
    line = _one_line_error(proc, 'train.py', problem, os.path.join(root, sub).rstrip('/'),
                           '(train_dataloader.dataset.', 'python -m hrnet_mm.datasets')
    assert not (tmp_path / 'work').exists(), 'the check runs before the runner is built'
    if case == 'missing data_root':
        assert '--cfg-options train_dataloader.dataset.data_root=PATH' in line


@pytest.mark.parametrize('case', ['missing data_root', 'corrupt json'])
def test_debug_shows_the_traceback(tmp_path: Path, case: str) -> None:
    config, write, problem, _ = CASES[case]
    root = write(tmp_path)
    proc = _tool(tmp_path, TRAIN, config, '--debug', '--cfg-options', f'train_dataloader.dataset.data_root={root}')
    assert proc.returncode == 2
    assert 'Traceback (most recent call last)' in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('train.py: error: ' + problem)


def test_missing_demo_data_names_the_generator(tmp_path: Path) -> None:
    """The demo config in a cwd without data/demo/: the line says how to write the synthetic data."""
    line = _one_line_error(_tool(tmp_path, TRAIN, POSE), 'train.py',
                           'dataset folder not found: data/demo/coco_keypoints',
                           'python -m hrnet_mm.datasets coco-keypoints data/demo/coco_keypoints')
    assert 'train_dataloader.dataset.data_root' in line


def test_test_tool_checks_the_test_data(tmp_path: Path) -> None:
    (tmp_path / 'ckpt.pth').write_bytes(b'not a checkpoint')
    proc = _tool(tmp_path, TEST, CLS, 'ckpt.pth', '--cfg-options', f'test_dataloader.dataset.data_root={tmp_path}/x')
    _one_line_error(proc, 'test.py', 'dataset folder not found', f'{tmp_path}/x', '(test_dataloader.dataset.data_root)')


def test_unknown_config_names_the_closest_shipped_configs(tmp_path: Path) -> None:
    proc = _tool(tmp_path, TRAIN, 'configs/pose/td-hm_hrnet-w32_dark_8xb64-210e_coco-256x192.py')
    _one_line_error(proc, 'train.py', 'config file not found: configs/pose/td-hm_hrnet-w32_dark_8xb64',
                    'did you mean configs/pose/td-hm_hrnet-w32_dark-8xb64-210e_coco-256x192.py')
    proc = _tool(tmp_path, TEST, 'ocrnet_hr48_4xb2-160k_cityscape.py', 'x.pth')
    _one_line_error(proc, 'test.py', 'did you mean configs/segmentation/ocrnet_hr48_4xb2-160k_cityscapes-512x1024.py')
    (tmp_path / 'mine.py').write_text("_base_ = 'hrnet_mm::detection/htc_hrnetv2p-w32_20e_coco.pyy'\n")
    proc = _tool(tmp_path, TRAIN, 'mine.py')
    _one_line_error(proc, 'train.py', 'cannot read config mine.py: _base_ not found: hrnet_mm::detection/htc_hrnetv2p-'
                    'w32_20e_coco.pyy; did you mean hrnet_mm::detection/htc_hrnetv2p-w32_20e_coco.py')


def test_missing_checkpoint_to_resume_from_is_one_line(tmp_path: Path) -> None:
    proc = _tool(tmp_path, TRAIN, CLS, '--resume', 'nope.pth')
    _one_line_error(proc, 'train.py', 'checkpoint not found: nope.pth (--resume)')


@pytest.fixture
def cls_cwd(tmp_path: Path) -> Path:
    """A tmp cwd with a tiny ImageNet-style demo set (1 image per class and split)."""
    from hrnet_mm.datasets import make_imagenet_folder

    make_imagenet_folder(str(tmp_path / 'data' / 'demo' / 'imagenet'), {'train': 1, 'val': 1}, size=32)
    return tmp_path


def test_checkpoint_of_another_model_is_one_line(cls_cwd: Path) -> None:
    import torch

    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(3, 3, 3, 3)}), cls_cwd / 'other.pth')
    proc = _tool(cls_cwd, TEST, CLS, 'other.pth', '--work-dir', 'work')
    _one_line_error(proc, 'test.py', 'checkpoint other.pth does not fit the model of', 'backbone.conv1.weight',
                    'another config')
    # a checkpoint of another task library: the line says which
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(3, 3, 3, 3),
                                'decode_head.conv_seg.weight': torch.zeros(2, 2, 1, 1)}), cls_cwd / 'seg.pth')
    proc = _tool(cls_cwd, TEST, CLS, 'seg.pth', '--work-dir', 'work')
    _one_line_error(proc, 'test.py', 'checkpoint seg.pth does not fit the model of',
                    'it holds a mmseg model, the config builds a mmpretrain one')
    (cls_cwd / 'garbage.pth').write_bytes(b'not a checkpoint')
    proc = _tool(cls_cwd, TEST, CLS, 'garbage.pth', '--work-dir', 'work')
    _one_line_error(proc, 'test.py', 'cannot read checkpoint garbage.pth')


def test_unknown_dataset_type_is_one_line(cls_cwd: Path) -> None:
    """A registry KeyError raised while the runner builds the dataset (after the checks) is one line too."""
    proc = _tool(cls_cwd, TRAIN, CLS, '--work-dir', 'work', '--cfg-options', 'train_dataloader.dataset.type=NoSuchSet')
    _one_line_error(proc, 'train.py', 'NoSuchSet is not in the mmpretrain::dataset registry', '--debug')


BUGGY_HOOK = '''
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class BuggyHook(Hook):
    def before_train(self, runner):
        raise KeyError('a bug in a hook')
'''


def test_other_errors_keep_their_traceback(cls_cwd: Path) -> None:
    """Errors that are not clearly caused by the input (here a hook's KeyError) are not hidden."""
    (cls_cwd / 'buggy_hook.py').write_text(BUGGY_HOOK)
    (cls_cwd / 'cfg.py').write_text(f'_base_ = {CLS!r}\n'
                                    "custom_imports = dict(imports=['hrnet_mm', 'buggy_hook'])\n"
                                    "custom_hooks = [dict(type='BuggyHook')]\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cls_cwd), ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, TRAIN, 'cfg.py', '--work-dir', 'work'], cwd=cls_cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback (most recent call last)' in proc.stderr and "KeyError: 'a bug in a hook'" in proc.stderr
    assert 'train.py: error' not in proc.stderr


# ---------------------------------------------------------------------------------------------- quiet logs


def _log_file(work: Path) -> str:
    (log,) = glob.glob(str(work / '*' / '*.log'))
    with open(log) as f:
        return f.read()


def test_console_is_quiet_by_default_and_verbose_shows_the_config(cls_cwd: Path) -> None:
    options = ['--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1']
    quiet = _tool(cls_cwd, TRAIN, CLS, '--work-dir', 'quiet', *options)
    out = quiet.stdout + quiet.stderr
    assert quiet.returncode == 0, out[-4000:]
    assert 'Config:' not in out and 'System environment' not in out and 'before_train_epoch:' not in out
    assert 'config, environment and hook order written to quiet/' in out
    assert 'Epoch(train) [1][1/1]' in out and 'accuracy/top1' in out  # the loss and metric lines stay
    log = _log_file(cls_cwd / 'quiet')
    assert 'Config:' in log and 'System environment' in log and 'Epoch(train) [1][1/1]' in log

    verbose = _tool(cls_cwd, TRAIN, CLS, '--work-dir', 'verbose', '--verbose', *options)
    out = verbose.stdout + verbose.stderr
    assert verbose.returncode == 0, out[-4000:]
    assert 'Config:' in out and 'System environment' in out and 'written to' not in out


def test_ctrl_c_prints_the_last_checkpoint_and_how_to_resume(cls_cwd: Path) -> None:
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]), OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, TRAIN, CLS, '--work-dir', 'work', '--cfg-options',
                             'train_cfg.max_epochs=500', 'default_hooks.checkpoint.interval=1'],
                            cwd=cls_cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (cls_cwd / 'work' / 'last_checkpoint').exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    line = err.strip().splitlines()[-1]  # after the library's warnings, if any
    assert line.startswith('train.py: interrupted; last checkpoint: ') and 'epoch_' in line, line
    assert line.endswith('default_hooks.checkpoint.interval=1 --resume'), line


def test_a_ctrl_c_lost_in_a_finalizer_still_stops_training() -> None:
    # A KeyboardInterrupt raised while a finalizer runs is printed as "Exception ignored" and dropped, and training
    # would go on; the guard that train.py installs remembers the Ctrl-C and its hook raises it again.
    import signal

    from hrnet_mm.cli.errors import InterruptGuard

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10000):  # the handler runs here, inside the finalizer
                pass

    guard = InterruptGuard()
    hook = guard.hook()
    before = signal.getsignal(signal.SIGINT)
    hook.before_train_iter(None, 0)  # no Ctrl-C yet: nothing happens
    with guard:
        obj = Finalized()
        del obj  # the KeyboardInterrupt is lost in __del__
        assert guard.requested
        for call in (lambda: hook.before_train_iter(None, 1), lambda: hook.before_val_iter(None, 0),
                     lambda: hook.after_train_epoch(None), lambda: hook.after_val_epoch(None, {})):
            with pytest.raises(KeyboardInterrupt):
                call()
    assert signal.getsignal(signal.SIGINT) is before
    assert hook.priority == 'HIGHEST'


# ------------------------------------------------------------------------------------ checks in-process


def _cfg(path: str, options: Dict[str, object]):
    from mmengine.config import Config

    cfg = Config.fromfile(path)
    cfg.merge_from_dict(options)
    return cfg


def _check(cfg, loaders: List[str], scope: str) -> str:
    from hrnet_mm.cli.dataset_checks import check_datasets
    from hrnet_mm.cli.errors import UserInputError

    with pytest.raises(UserInputError) as info:
        check_datasets(cfg, loaders, scope)
    assert '\n' not in str(info.value)
    return str(info.value)


def test_wrapped_datasets_are_checked(tmp_path: Path) -> None:
    from mmengine.config import ConfigDict

    from hrnet_mm.datasets import make_coco_detection

    make_coco_detection(str(tmp_path / 'coco'), {'train': 1, 'val': 1})
    cfg = _cfg(DET, {})
    inner = cfg.train_dataloader.dataset
    good = ConfigDict(inner, data_root=str(tmp_path / 'coco'))
    cfg.train_dataloader.dataset = ConfigDict(type='RepeatDataset', times=2, dataset=ConfigDict(
        type='ConcatDataset', datasets=[good, ConfigDict(inner, data_root=str(tmp_path / 'no'))]))
    message = _check(cfg, ['train_dataloader'], 'mmdet')
    assert f'dataset folder not found: {tmp_path}/no (train_dataloader.dataset.dataset.datasets.1.data_root)' in message
    cfg.train_dataloader.dataset.dataset.datasets[1] = good
    from hrnet_mm.cli.dataset_checks import check_datasets

    check_datasets(cfg, ['train_dataloader'], 'mmdet')  # all good
    cfg.train_dataloader.dataset = ConfigDict(type='ClassBalancedDataset', oversample_thr=0.1,
                                              dataset=ConfigDict(inner, data_root=str(tmp_path)))
    assert 'annotation file not found' in _check(cfg, ['train_dataloader'], 'mmdet')


def test_evaluator_annotation_file_and_val_split_are_checked(tmp_path: Path, monkeypatch) -> None:
    from hrnet_mm.datasets import make_coco_detection

    monkeypatch.chdir(tmp_path)  # the evaluator's relative data/demo/... path: not the checkout's (make demo writes it)
    make_coco_detection(str(tmp_path / 'coco'), {'train': 1})
    root = str(tmp_path / 'coco')
    cfg = _cfg(DET, {'train_dataloader.dataset.data_root': root, 'val_dataloader.dataset.data_root': root})
    message = _check(cfg, ['train_dataloader', 'val_dataloader'], 'mmdet')
    assert f'annotation file not found: {root}/annotations/instances_val.json (val_dataloader.dataset.ann_file)' \
        in message
    make_coco_detection(root, {'val': 1})
    message = _check(cfg, ['train_dataloader', 'val_dataloader'], 'mmdet')
    assert 'data/demo/coco/annotations/instances_val.json (val_evaluator.ann_file)' in message


def test_segmentation_suffix_and_pose_keys(tmp_path: Path) -> None:
    root = _empty_cityscapes(tmp_path)
    for sub in ('leftImg8bit/train/aachen', 'gtFine/train/aachen'):
        os.makedirs(os.path.join(root, sub))
        Path(root, sub, 'x.jpg').write_bytes(b'')
    message = _check(_cfg(SEG, {'train_dataloader.dataset.data_root': root}), ['train_dataloader'], 'mmseg')
    assert "no files ending with '_leftImg8bit.png'" in message and 'img_suffix' in message

    ann = tmp_path / 'kp' / 'annotations'
    ann.mkdir(parents=True)
    (tmp_path / 'kp' / 'train').mkdir()
    (tmp_path / 'kp' / 'train' / 'a.jpg').write_bytes(b'')
    (ann / 'person_keypoints_train.json').write_text(json.dumps(dict(images=[], categories=[])))
    message = _check(_cfg(POSE, {'train_dataloader.dataset.data_root': str(tmp_path / 'kp')}), ['train_dataloader'],
                     'mmpose')
    assert "annotation file has no 'annotations' key" in message and 'coco-keypoints' in message


def test_imagenet_class_dirs_without_images(tmp_path: Path) -> None:
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    (tmp_path / 'train' / 'a' / 'notes.txt').write_text('')
    message = _check(_cfg(CLS, {'train_dataloader.dataset.data_root': str(tmp_path)}), ['train_dataloader'],
                     'mmpretrain')
    assert 'no images' in message and 'class subfolders' in message


def test_user_error_message_recognises_library_errors() -> None:
    from hrnet_mm.cli.errors import user_error_message

    assert 'file not found: a/b.jpg' in user_error_message(FileNotFoundError(2, 'No such file', 'a/b.jpg'))
    with pytest.raises(ValueError) as info:
        json.loads('{')
    assert 'invalid JSON' in user_error_message(info.value)
    assert 'Foo is not in the mmdet::model registry' in user_error_message(
        KeyError('Foo is not in the mmdet::model registry. Please check whether the value of `Foo` is correct'))
    assert user_error_message(KeyError('backbone')) is None
    assert user_error_message(ValueError('a bug')) is None
    try:
        try:
            raise FileNotFoundError(2, 'No such file', 'x.json')
        except FileNotFoundError as inner:
            raise RuntimeError('while building') from inner
    except RuntimeError as outer:
        assert 'x.json' in user_error_message(outer)


def test_interrupted_message_names_the_checkpoint_and_resume(tmp_path: Path) -> None:
    from hrnet_mm.cli.errors import interrupted_message

    command = ['python', 'tools/train.py', 'cfg.py', '--work-dir', str(tmp_path)]
    assert 'before the first checkpoint' in interrupted_message(str(tmp_path), command)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_3.pth'))
    message = interrupted_message(str(tmp_path), command)
    assert f'last checkpoint: {tmp_path}/epoch_3.pth' in message
    assert message.endswith(f'python tools/train.py cfg.py --work-dir {tmp_path} --resume')


def test_an_error_raised_while_handling_ctrl_c_counts_as_the_interrupt() -> None:
    """mmengine turns a Ctrl-C during its config formatting (in every checkpoint save) into a SyntaxError."""
    from hrnet_mm.cli.errors import caused_by_interrupt

    def save_checkpoint():
        try:
            raise KeyboardInterrupt
        except BaseException:
            raise SyntaxError('Failed to format the config file')

    with pytest.raises(SyntaxError) as info:
        save_checkpoint()
    assert caused_by_interrupt(info.value)
    assert caused_by_interrupt(KeyboardInterrupt())
    assert not caused_by_interrupt(ValueError('a real bug'))


def test_load_from_summarizes_what_fits_and_refuses_what_does_not(cls_cwd: Path) -> None:
    """Fine-tuning from a checkpoint with another head is one warning line; a file none of whose weights fit the
    model (here a bare backbone) is a one-line error pointing at the backbone's init_cfg."""
    import torch
    from mmengine.config import Config

    from hrnet_mm.registry import build_in_scope

    torch.save(dict(state_dict={'conv1.weight': torch.zeros(3)}), cls_cwd / 'bare.pth')
    proc = _tool(cls_cwd, TRAIN, CLS, '--work-dir', 'work', '--cfg-options', 'load_from=bare.pth')
    _one_line_error(proc, 'train.py', 'load_from bare.pth: none of the weights of the model', 'bare backbone',
                    "init_cfg=dict(type='Pretrained'")

    state = build_in_scope('mmpretrain', Config.fromfile(CLS).model).state_dict()
    (head,) = [k for k in state if k.startswith('head.') and k.endswith('.weight')]
    state[head] = torch.zeros(7, *state[head].shape[1:])
    torch.save(dict(state_dict=state), cls_cwd / 'other_head.pth')
    proc = _tool(cls_cwd, TRAIN, CLS, '--work-dir', 'work', '--cfg-options', 'load_from=other_head.pth',
                 'train_cfg.max_epochs=1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f'load_from other_head.pth: {len(state) - 1} of {len(state)} weights load; 1 with other shapes' in out, out
    assert f'e.g. {head}: checkpoint (7, ' in out


@pytest.mark.parametrize('option,expected', [
    ('model.backbone.arch=w33', "cannot build HRNet from the config: unknown HRNet arch 'w33'; valid presets: "),
    ('model.backbone.widths=1', "cannot build HRNet from the config: HRNet got unknown arguments ['widths']"),
    ('optim_wrapper.optimizer.lr=-1', 'cannot build Adam from the config: Invalid learning rate: -1')])
def test_a_wrong_argument_in_the_config_is_one_line(tmp_path: Path, option: str, expected: str) -> None:
    """An argument the model or optimizer refuses (here through --cfg-options) is one line naming the class."""
    subprocess.run([sys.executable, '-m', 'hrnet_mm.datasets', 'imagenet', str(tmp_path / 'data/demo/imagenet'),
                    '--train', '4', '--val', '2'], check=True, capture_output=True, timeout=300)
    proc = _tool(tmp_path, TRAIN, CLS, '--work-dir', 'work', '--cfg-options', option)
    _one_line_error(proc, 'train.py', expected)
