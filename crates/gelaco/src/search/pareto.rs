//! Pareto tools for maximised objectives: dominance, fast non-dominated sorting, crowding
//! distance, 2-D hypervolume and IGD.

/// `a` dominates `b`: no worse in every objective, better in one (all maximised).
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    let mut better = false;
    for (x, y) in a.iter().zip(b) {
        if x < y {
            return false;
        }
        if x > y {
            better = true;
        }
    }
    better
}

/// Deb's fast non-dominated sort: fronts of indices, best first.
pub fn non_dominated_sort(objs: &[Vec<f64>]) -> Vec<Vec<usize>> {
    let n = objs.len();
    let mut dominated_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut count = vec![0usize; n];
    let mut fronts = vec![Vec::new()];
    for i in 0..n {
        for j in (i + 1)..n {
            if dominates(&objs[i], &objs[j]) {
                dominated_by[i].push(j);
                count[j] += 1;
            } else if dominates(&objs[j], &objs[i]) {
                dominated_by[j].push(i);
                count[i] += 1;
            }
        }
    }
    for i in 0..n {
        if count[i] == 0 {
            fronts[0].push(i);
        }
    }
    let mut k = 0;
    while !fronts[k].is_empty() {
        let mut next = Vec::new();
        for &i in &fronts[k] {
            for &j in &dominated_by[i] {
                count[j] -= 1;
                if count[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        fronts.push(next);
        k += 1;
    }
    fronts.pop();
    fronts
}

/// Crowding distance of the members of one front (infinite at the extremes).
pub fn crowding_distance(objs: &[Vec<f64>], front: &[usize]) -> Vec<f64> {
    let n = front.len();
    let mut dist = vec![0.0; n];
    if n <= 2 {
        return vec![f64::INFINITY; n];
    }
    let m = objs[front[0]].len();
    for k in 0..m {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| objs[front[a]][k].total_cmp(&objs[front[b]][k]).then(a.cmp(&b)));
        let lo = objs[front[order[0]]][k];
        let hi = objs[front[order[n - 1]]][k];
        dist[order[0]] = f64::INFINITY;
        dist[order[n - 1]] = f64::INFINITY;
        if hi > lo {
            for w in 1..n - 1 {
                let gap = objs[front[order[w + 1]]][k] - objs[front[order[w - 1]]][k];
                dist[order[w]] += gap / (hi - lo);
            }
        }
    }
    dist
}

/// The non-dominated points of a set (indices), sorted by the first objective.
pub fn front_of(objs: &[Vec<f64>]) -> Vec<usize> {
    let mut f = non_dominated_sort(objs).into_iter().next().unwrap_or_default();
    f.sort_by(|&a, &b| objs[a][0].total_cmp(&objs[b][0]).then(a.cmp(&b)));
    f
}

/// Area dominated by 2-D points (maximised) above the reference point `r`.
pub fn hypervolume_2d(points: &[[f64; 2]], r: [f64; 2]) -> f64 {
    let mut pts: Vec<[f64; 2]> = points.iter().copied().filter(|p| p[0] > r[0] && p[1] > r[1]).collect();
    // by first objective, best first; sweep keeping the best second objective so far
    pts.sort_by(|a, b| b[0].total_cmp(&a[0]).then(b[1].total_cmp(&a[1])));
    let mut hv = 0.0;
    let mut best_y = r[1];
    for p in pts {
        if p[1] > best_y {
            hv += (p[0] - r[0]) * (p[1] - best_y);
            best_y = p[1];
        }
    }
    hv
}

/// Inverted generational distance: mean distance from each reference point to the
/// nearest obtained point.
pub fn igd(reference: &[Vec<f64>], obtained: &[Vec<f64>]) -> f64 {
    let d = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    reference
        .iter()
        .map(|r| obtained.iter().map(|o| d(r, o)).fold(f64::INFINITY, f64::min))
        .sum::<f64>()
        / reference.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorting_into_fronts() {
        let objs = vec![
            vec![1.0, 1.0], // 0: dominated by 1 and 3
            vec![2.0, 2.0], // 1: front 0
            vec![3.0, 0.5], // 2: front 0
            vec![1.5, 1.5], // 3: dominated by 1
            vec![0.5, 3.0], // 4: front 0
            vec![1.0, 1.0], // 5: equal to 0: neither dominates
        ];
        let f = non_dominated_sort(&objs);
        assert_eq!(f, vec![vec![1, 2, 4], vec![3], vec![0, 5]]);
        assert_eq!(front_of(&objs), vec![4, 1, 2]);
    }

    #[test]
    fn crowding_at_extremes_and_inside() {
        let objs = vec![vec![0.0, 4.0], vec![1.0, 3.0], vec![3.0, 1.0], vec![4.0, 0.0]];
        let d = crowding_distance(&objs, &[0, 1, 2, 3]);
        assert!(d[0].is_infinite() && d[3].is_infinite());
        // point 1: (3 - 0)/4 in both objectives
        assert!((d[1] - 1.5).abs() < 1e-12);
        assert!((d[2] - 1.5).abs() < 1e-12);
    }

    #[test]
    fn hypervolume_of_a_staircase() {
        let hv = hypervolume_2d(&[[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0]], [0.0, 0.0]);
        // 3x1 + 2x1 + 1x1
        assert!((hv - 6.0).abs() < 1e-12);
        assert_eq!(hypervolume_2d(&[[-1.0, 5.0]], [0.0, 0.0]), 0.0);
    }

    #[test]
    fn igd_is_zero_on_the_reference() {
        let r = vec![vec![0.0, 1.0], vec![1.0, 0.0]];
        assert_eq!(igd(&r, &r), 0.0);
        assert!((igd(&r, &[vec![0.0, 1.0]]) - 2f64.sqrt() / 2.0).abs() < 1e-12);
    }
}
