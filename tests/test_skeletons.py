import numpy as np
import pytest

from posekit import skeletons

REQUIRED = ['h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17', 'cmu_31', 'cmu_daz_43']


def test_required_formats_registered():
    for name in REQUIRED:
        assert name in skeletons.names()
        assert skeletons.get(name).name == name


def test_unknown_format_lists_known_ones():
    with pytest.raises(KeyError, match='h36m_17.*smpl_24'):
        skeletons.get('h36m_99')


@pytest.mark.parametrize('name', skeletons.names())
def test_mirror_is_involution_mapping_sides(name):
    ji = skeletons.get(name)
    mirror = np.array(ji.mirror)
    np.testing.assert_array_equal(mirror[mirror], np.arange(ji.n_joints))
    n_sided = 0
    for i, j in enumerate(mirror):
        a, b = ji.names[i], ji.names[j]
        if a[0] == 'l' and ('r' + a[1:]) in ji.names:
            assert b == 'r' + a[1:]
            n_sided += 1
        elif a[0] == 'r' and ('l' + a[1:]) in ji.names:
            assert b == 'l' + a[1:]
        else:
            assert i == j, f'centre joint {a} must map to itself'
    assert n_sided >= 4  # every body format has at least shoulders, elbows, hips, knees


@pytest.mark.parametrize('name', skeletons.names())
def test_edges_form_one_tree(name):
    ji = skeletons.get(name)
    assert len(ji.edges) == ji.n_joints - 1
    # Connected: a walk from the root over the undirected edges reaches every joint.
    adj = ji.adjacency()
    seen, frontier = {ji.root}, [ji.root]
    while frontier:
        i = frontier.pop()
        for j in np.flatnonzero(adj[i]):
            if j not in seen:
                seen.add(int(j))
                frontier.append(int(j))
    assert seen == set(range(ji.n_joints))
    assert np.array_equal(adj, adj.T) and not np.any(np.diag(adj))


@pytest.mark.parametrize('name', skeletons.names())
def test_names_follow_the_convention(name):
    for n in skeletons.get(name).names:
        assert n == n.lower() and n.isalnum(), n


def test_h36m_order_matches_the_dataset_convention():
    ji = skeletons.get('h36m_17')
    assert ji.names[:4] == ('pelv', 'rhip', 'rkne', 'rank')
    assert ji.parents == (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
    assert skeletons.get('h36m_16').parents == (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 8, 10, 11, 8, 13, 14)


def test_mirror_swaps_expected_pairs():
    ji = skeletons.get('coco_19')
    assert ji.names[ji.mirror[ji.index('lear')]] == 'rear'
    assert ji.mirror[ji.index('nose')] == ji.index('nose')


def test_jointinfo_rejects_bad_definitions():
    with pytest.raises(ValueError, match='duplicate'):
        skeletons.JointInfo('x', ('a', 'a'), (-1, 0))
    with pytest.raises(ValueError, match='one root'):
        skeletons.JointInfo('x', ('a', 'b'), (-1, -1))
    with pytest.raises(ValueError, match='cycle'):
        skeletons.JointInfo('x', ('a', 'b', 'c'), (-1, 2, 1))
    with pytest.raises(ValueError, match='lowercase'):
        skeletons.JointInfo('x', ('Pelv',), (-1,))


def test_index_error_names_joints():
    with pytest.raises(KeyError, match="'lsho'"):
        skeletons.get('h36m_17').index('lshoulder')


def test_joint_space_concatenates_formats_and_keeps_mirror():
    space = skeletons.JointSpace(['h36m_17', 'smpl_24'])
    assert space.n_joints == 41
    assert space.names[0] == 'pelv_h36m_17' and space.names[17] == 'pelv_smpl_24'
    lsho = space.names.index('lsho_smpl_24')
    assert space.names[space.mirror[lsho]] == 'rsho_smpl_24'
    assert space.base_name(lsho) == 'lsho'
    names, avg = space.averaging_matrix()
    np.testing.assert_allclose(avg.sum(axis=1), 1.0, rtol=1e-6)
    row = avg[names.index('lsho')]
    assert set(np.flatnonzero(row)) == {space.names.index('lsho_h36m_17'), lsho}
    with pytest.raises(KeyError):
        space.format_mask('coco_19')
    with pytest.raises(ValueError, match='distinct'):
        skeletons.JointSpace(['h36m_17', 'h36m_17'])


def test_identify_bvh_names():
    skeleton, conv, names = skeletons.identify_bvh_skeleton(
        ['hip', 'lhipjoint', 'lfemur', 'ltibia', 'lfoot', 'ltoes', 'rhipjoint', 'rfemur', 'rtibia',
         'rfoot', 'rtoes', 'lowerback', 'upperback', 'thorax', 'lowerneck', 'upperneck', 'head',
         'lclavicle', 'lhumerus', 'lradius', 'lwrist', 'lhand', 'lfingers', 'lthumb', 'rclavicle',
         'rhumerus', 'rradius', 'rwrist', 'rhand', 'rfingers', 'rthumb'])
    assert (skeleton, conv) == ('cmu_31', 'cmu_amc2bvh')
    assert names == list(skeletons.get('cmu_31').names)
    with pytest.raises(KeyError, match='matches no registered format'):
        skeletons.identify_bvh_skeleton(['root', 'spine'])
