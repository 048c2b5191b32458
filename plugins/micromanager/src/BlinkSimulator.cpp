#include "BlinkSimulator.h"

#include <algorithm>
#include <cmath>

namespace rtsmlm {

void BlinkSimulator::Reset(const BlinkParameters& params)
{
   p_ = params;
   rng_.seed(p_.seed);
   std::uniform_real_distribution<double> ux(0.0, p_.sensorWidth);
   std::uniform_real_distribution<double> uy(0.0, p_.sensorHeight);
   emitters_.assign(static_cast<std::size_t>(std::max(0L, p_.emitterCount)), Emitter{0.0, 0.0, State::Off});
   for (auto& e : emitters_)
   {
      e.x = ux(rng_);
      e.y = uy(rng_);
   }
   expected_.assign(static_cast<std::size_t>(p_.sensorWidth) * p_.sensorHeight, 0.0);
}

void BlinkSimulator::UpdateLive(const BlinkParameters& params)
{
   BlinkParameters kept = params;
   kept.sensorWidth = p_.sensorWidth;
   kept.sensorHeight = p_.sensorHeight;
   kept.emitterCount = p_.emitterCount;
   kept.seed = p_.seed;
   p_ = kept;
}

long BlinkSimulator::SurvivingEmitters() const
{
   return static_cast<long>(std::count_if(emitters_.begin(), emitters_.end(),
      [](const Emitter& e) { return e.state != State::Bleached; }));
}

void BlinkSimulator::AddSpot(double x, double y, double photons)
{
   // Integrate the Gaussian over each pixel (difference of error functions), within 4 sigma.
   const double s = p_.psfSigmaPixels;
   const double norm = 1.0 / (std::sqrt(2.0) * s);
   const int x0 = std::max(0, static_cast<int>(std::floor(x - 4 * s)));
   const int x1 = std::min(static_cast<int>(p_.sensorWidth) - 1, static_cast<int>(std::floor(x + 4 * s)));
   const int y0 = std::max(0, static_cast<int>(std::floor(y - 4 * s)));
   const int y1 = std::min(static_cast<int>(p_.sensorHeight) - 1, static_cast<int>(std::floor(y + 4 * s)));
   if (x0 > x1 || y0 > y1) return;
   double wx[64], wy[64];
   const int nx = std::min(64, x1 - x0 + 1), ny = std::min(64, y1 - y0 + 1);
   for (int i = 0; i < nx; ++i)
      wx[i] = 0.5 * (std::erf((x0 + i + 1 - x) * norm) - std::erf((x0 + i - x) * norm));
   for (int j = 0; j < ny; ++j)
      wy[j] = 0.5 * (std::erf((y0 + j + 1 - y) * norm) - std::erf((y0 + j - y) * norm));
   for (int j = 0; j < ny; ++j)
   {
      double* row = &expected_[static_cast<std::size_t>(y0 + j) * p_.sensorWidth + x0];
      for (int i = 0; i < nx; ++i)
         row[i] += photons * wx[i] * wy[j];
   }
}

long BlinkSimulator::RenderFrame(double laserPower_mW, std::uint16_t* dst)
{
   std::uniform_real_distribution<double> u01(0.0, 1.0);
   const double pActivate = 1.0 - std::exp(-p_.activationPerMilliwatt * std::max(0.0, laserPower_mW));
   const double pOff = 1.0 / std::max(1.0, p_.meanOnFrames);

   std::fill(expected_.begin(), expected_.end(), p_.backgroundPhotons);
   long on = 0;
   for (auto& e : emitters_)
   {
      if (e.state == State::Off && u01(rng_) < pActivate)
         e.state = State::On;
      if (e.state != State::On) continue;
      ++on;
      AddSpot(e.x, e.y, p_.photonsPerFrame);
      // Decide the next frame's state now: bleaching takes precedence over switching off.
      if (u01(rng_) < p_.bleachProbability)
         e.state = State::Bleached;
      else if (u01(rng_) < pOff)
         e.state = State::Off;
   }

   // Shot noise, EM multiplication and read noise. Exact draws (Poisson, then gamma for the EM
   // register) where few photons arrive; above kGaussianFrom expected photons their sum is
   // Gaussian to good accuracy (EM excess-noise factor 2), which keeps a 256 x 256 frame at a
   // few milliseconds instead of tens.
   constexpr double kGaussianFrom = 30.0;
   std::normal_distribution<double> unit(0.0, 1.0);
   const double toAdu = 1.0 / p_.electronsPerAdu;
   const double gain = std::max(1.0, p_.emGain);
   const bool amplify = p_.emGain > 1.0;
   const double excess = amplify ? 2.0 : 1.0;
   const double readVar = p_.readNoiseElectrons * p_.readNoiseElectrons;
   for (std::size_t k = 0; k < expected_.size(); ++k)
   {
      const double lambda = expected_[k];
      double electrons;
      if (lambda >= kGaussianFrom)
      {
         electrons = lambda * gain + std::sqrt(excess * lambda * gain * gain + readVar) * unit(rng_);
      }
      else
      {
         electrons = static_cast<double>(std::poisson_distribution<long>(lambda)(rng_));
         if (amplify && electrons > 0.0)
            electrons = std::gamma_distribution<double>(electrons, gain)(rng_);
         electrons += p_.readNoiseElectrons * unit(rng_);
      }
      const double adu = electrons * toAdu + p_.offsetAdu;
      dst[k] = static_cast<std::uint16_t>(std::clamp(std::lround(adu), 0L, 65535L));
   }
   return on;
}

} // namespace rtsmlm
